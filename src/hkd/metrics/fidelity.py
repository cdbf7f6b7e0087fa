"""FID / IS / KID through torch-fidelity, with the digit classifier registered as an
offline feature extractor (``hkd-digit-classifier``)."""

from __future__ import annotations

import numpy as np
import torch
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from hkd.metrics.classifier import load_classifier, uint8_to_model

EXTRACTOR_NAME = "hkd-digit-classifier"


class DigitFeatureExtractor(FeatureExtractorBase):
    """Penultimate (128-d) features for FID/KID, logits for IS."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{EXTRACTOR_NAME} needs feature_extractor_weights_path (a classifier checkpoint)")
        self.net, _ = load_classifier(feature_extractor_weights_path)

    @staticmethod
    def get_provided_features_list():
        return ("penultimate", "logits_unbiased")

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits_unbiased", "fid": "penultimate", "kid": "penultimate",
                "prc": "penultimate"}[metric]

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


def fidelity_metrics(generated: np.ndarray, reference: np.ndarray, extractor: str = EXTRACTOR_NAME,
                     weights_path: str | None = None, cuda: bool = False, kid: bool = False) -> dict:
    """torch_fidelity.calculate_metrics on uint8 arrays; IS is of ``generated``. ``extractor``:
    the digit classifier (``weights_path`` = its checkpoint) or a torch-fidelity extractor such
    as ``inception-v3-compat`` (``weights_path`` None = torch-fidelity's download)."""
    if extractor == EXTRACTOR_NAME:
        register()
    elif generated.shape[1] == 1:  # Inception reads RGB: grey images as three equal channels
        generated, reference = generated.repeat(3, axis=1), reference.repeat(3, axis=1)
    kid_subset = min(len(generated), len(reference), 1000)
    return torch_fidelity.calculate_metrics(
        input1=Uint8Images(generated), input2=Uint8Images(reference), cuda=cuda,
        isc=True, fid=True, kid=kid, kid_subset_size=kid_subset, isc_splits=10,
        feature_extractor=extractor, feature_extractor_weights_path=weights_path,
        save_cpu_ram=True, cache=False, verbose=False, batch_size=250,
    )
