"""FID / IS / KID through torch-fidelity, with the digit classifier registered as an
offline feature extractor (``hkd-digit-classifier``); with that classifier, also the share
of images it calls one digit with confidence (the recognisable digit rate)."""

from __future__ import annotations

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from hkd.metrics.classifier import load_classifier, uint8_to_model

EXTRACTOR_NAME = "hkd-digit-classifier"


#: a sample is a "recognisable digit" when the digit classifier gives one class at least
#: this probability: a check on the samples themselves, beside FID's check on their distribution
RECOGNISABLE_THRESHOLD = 0.9

#: the recognisable-digit keys a scorer adds with the digit classifier (with Inception's 1008
#: ImageNet classes the rate has no meaning, and the keys are absent)
RECOGNISABLE_KEYS = ("recognisable_rate", "recognisable_rate_std", "recognisable_threshold")

#: what a scorer returns for a set of generated images
SCORE_KEYS = (
    "fid",
    "is_mean",
    "is_std",
    "kid_mean",
    "kid_std",
    "fid_sampling_std",
    "fid_bootstrap",
    *RECOGNISABLE_KEYS,
)


class DigitFeatureExtractor(FeatureExtractorBase):
    """Penultimate (128-d) features for FID/KID, logits for IS."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(
                f"{EXTRACTOR_NAME} needs feature_extractor_weights_path (a classifier checkpoint)"
            )
        self.net, _ = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("penultimate", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[
            metric
        ]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 images [B, C, H, W], got {x.dtype} {tuple(x.shape)}")
        feats, logits = self.net(uint8_to_model(x))
        out = {"penultimate": feats, "logits_unbiased": logits}
        return tuple(out[name] for name in self.features_list)


def register() -> None:
    if EXTRACTOR_NAME not in torch_fidelity.registry.FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, DigitFeatureExtractor)


class Uint8Images(torch.utils.data.Dataset):
    """The Dataset form torch-fidelity reads: one uint8 [C, H, W] tensor per item."""

    def __init__(self, images: np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 [N, C, H, W], got {images.dtype} {images.shape}")
        self.images = torch.from_numpy(images)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def recognisable(logits: torch.Tensor, threshold: float = RECOGNISABLE_THRESHOLD) -> np.ndarray:
    """Per image, whether the classifier's most probable class has probability >= ``threshold``
    (bool [N]), from the logits torch-fidelity already extracted for IS: no second pass."""
    probs = torch.softmax(logits.double(), dim=1)
    return (probs.max(dim=1).values >= threshold).numpy()


def recognisable_scores(hits: np.ndarray, resamples: list[np.ndarray], threshold: float) -> dict:
    """The share of recognisable images (``hits``) and its standard deviation over the same
    bootstrap ``resamples`` (index arrays) as FID's sampling spread (None with fewer than two)."""
    boot = [float(hits[i].mean()) for i in resamples]
    return {
        "recognisable_rate": float(hits.mean()),
        "recognisable_rate_std": float(np.std(boot, ddof=1)) if len(boot) > 1 else None,
        "recognisable_threshold": threshold,
    }


def _as_model_input(images: np.ndarray, extractor: str) -> np.ndarray:
    """Inception reads RGB: grey images as three equal channels; the digit classifier reads them as they are."""
    if extractor != EXTRACTOR_NAME and images.shape[1] == 1:
        return images.repeat(3, axis=1)
    return images


class Scorer:
    """FID / IS / KID of generated images against one reference set, through torch-fidelity's
    own feature extraction and metric functions (the numbers ``calculate_metrics`` gives), with
    the reference's features computed once for every row, and FID's sampling spread: the
    standard deviation of FID over ``bootstrap`` resamples (with replacement) of the generated
    images' features, the reference fixed. With the digit classifier, also the recognisable
    digit rate (``RECOGNISABLE_THRESHOLD``) from the same logits, with its spread over the same
    resamples."""

    def __init__(
        self,
        reference: np.ndarray,
        extractor: str = EXTRACTOR_NAME,
        weights_path: str | None = None,
        cuda: bool = False,
        bootstrap: int = 0,
        seed: int = 0,
    ):
        from torch_fidelity.utils import create_feature_extractor, resolve_feature_layer_for_metric

        if extractor == EXTRACTOR_NAME:
            register()
        self.extractor, self.weights_path = extractor, weights_path
        self.cuda, self.bootstrap, self.seed = cuda, int(bootstrap), seed
        #: the recognisable-digit threshold; None where the features are not the digit classifier's
        self.threshold = RECOGNISABLE_THRESHOLD if extractor == EXTRACTOR_NAME else None
        self.kwargs = {
            "cuda": cuda,
            "isc_splits": 10,
            "feature_extractor": extractor,
            "verbose": False,
            "feature_extractor_weights_path": weights_path,
            "save_cpu_ram": True,
            "batch_size": 250,
        }
        self.layers = {m: resolve_feature_layer_for_metric(m, **self.kwargs) for m in ("isc", "fid", "kid")}
        self.net = create_feature_extractor(extractor, sorted(set(self.layers.values())), **self.kwargs)
        from torch_fidelity.metric_fid import fid_features_to_statistics

        self.reference = self._features(reference)
        self.n_reference = len(reference)
        self.reference_stats = fid_features_to_statistics(self.reference[self.layers["fid"]])

    def _features(self, images: np.ndarray) -> dict:
        from torch_fidelity.utils import get_featuresdict_from_dataset

        return get_featuresdict_from_dataset(
            Uint8Images(_as_model_input(images, self.extractor)), self.net, 250, self.cuda, True, False
        )

    def _fid(self, features: torch.Tensor) -> float:
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

        stats = fid_features_to_statistics(features)
        return fid_statistics_to_metric(stats, self.reference_stats, False)["frechet_inception_distance"]

    def __call__(self, generated: np.ndarray) -> dict:
        """The ``SCORE_KEYS`` of uint8 images."""
        from torch_fidelity.metric_isc import isc_featuresdict_to_metric
        from torch_fidelity.metric_kid import kid_featuresdict_to_metric

        feats = self._features(generated)
        isc = isc_featuresdict_to_metric(feats, self.layers["isc"], **self.kwargs)
        kid = kid_featuresdict_to_metric(
            feats,
            self.reference,
            self.layers["kid"],
            kid_subset_size=min(len(generated), self.n_reference, 1000),
            **self.kwargs,
        )
        fid_feats = feats[self.layers["fid"]]
        rng = np.random.default_rng(self.seed)
        resamples = [rng.integers(0, len(fid_feats), len(fid_feats)) for _ in range(self.bootstrap)]
        boot = [self._fid(fid_feats[i]) for i in resamples]
        scores = {
            "fid": float(self._fid(fid_feats)),
            "is_mean": float(isc["inception_score_mean"]),
            "is_std": float(isc["inception_score_std"]),
            "kid_mean": float(kid["kernel_inception_distance_mean"]),
            "kid_std": float(kid["kernel_inception_distance_std"]),
            "fid_sampling_std": float(np.std(boot, ddof=1)) if len(boot) > 1 else None,
            "fid_bootstrap": self.bootstrap,
        }
        if self.threshold is not None:  # the digit classifier: its logits are IS's features
            hits = recognisable(feats[self.layers["isc"]], self.threshold)
            scores.update(recognisable_scores(hits, resamples, self.threshold))
        return scores


def fidelity_metrics(
    generated: np.ndarray,
    reference: np.ndarray,
    extractor: str = EXTRACTOR_NAME,
    weights_path: str | None = None,
    cuda: bool = False,
    kid: bool = False,
) -> dict:
    """torch_fidelity.calculate_metrics on uint8 arrays; IS is of ``generated``. ``extractor``:
    the digit classifier (``weights_path`` = its checkpoint) or a torch-fidelity extractor such
    as ``inception-v3-compat`` (``weights_path`` None = torch-fidelity's download)."""
    if extractor == EXTRACTOR_NAME:
        register()
    generated, reference = _as_model_input(generated, extractor), _as_model_input(reference, extractor)
    kid_subset = min(len(generated), len(reference), 1000)
    return torch_fidelity.calculate_metrics(
        input1=Uint8Images(generated),
        input2=Uint8Images(reference),
        cuda=cuda,
        isc=True,
        fid=True,
        kid=kid,
        kid_subset_size=kid_subset,
        isc_splits=10,
        feature_extractor=extractor,
        feature_extractor_weights_path=weights_path,
        save_cpu_ram=True,
        cache=False,
        verbose=False,
        batch_size=250,
    )
