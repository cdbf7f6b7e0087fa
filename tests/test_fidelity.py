import numpy as np
import pytest
import torch

from hkd.images import to_uint8
from hkd.io import save_torch
from hkd.metrics.classifier import DigitClassifier
from hkd.metrics.fidelity import RECOGNISABLE_KEYS, fidelity_metrics


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "clf.pt"
    save_torch(
        {
            "kind": "digit_classifier",
            "state": DigitClassifier().state_dict(),
            "heldout_accuracy": 0.0,
            "feature_dim": 128,
        },
        path,
    )
    return str(path)


def test_torch_fidelity_with_offline_extractor(weights):
    rng = np.random.default_rng(0)
    a = rng.uniform(-1, 1, (300, 1, 32, 32)).astype(np.float32)
    b = rng.uniform(-1, 1, (300, 1, 32, 32)).astype(np.float32)
    same = fidelity_metrics(to_uint8(a), to_uint8(a), weights_path=weights)
    assert abs(same["frechet_inception_distance"]) < 1e-3
    shifted = fidelity_metrics(to_uint8(np.clip(b * 0.3 - 0.6, -1, 1)), to_uint8(a), weights_path=weights)
    assert shifted["frechet_inception_distance"] > 10 * max(same["frechet_inception_distance"], 1e-4)
    assert 1.0 <= same["inception_score_mean"] <= 10.0


def test_to_uint8_rounds_like_edm():
    x = np.array([-1.0, -0.5, 0.0, 1.0, 2.0], np.float32)
    np.testing.assert_array_equal(to_uint8(x), [0, 64, 128, 255, 255])


def _random_inception_weights(path, monkeypatch):
    """A state dict in torch-fidelity's inception-v3-compat format with random weights: the
    real file cannot be downloaded offline, and equality does not depend on the values."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), path)
    return str(path)


@pytest.mark.parametrize("extractor", ["hkd-digit-classifier", "inception-v3-compat"])
def test_suite_fid_equals_torch_fidelity_on_the_saved_images(
    extractor, smoke_cfg, weights, tmp_path, monkeypatch
):
    """A stage's FID / IS / KID equal torch_fidelity.calculate_metrics run directly on the
    images the stage saved, written as PNG files the way EDM writes samples."""
    import copy
    import json

    import torch_fidelity
    from PIL import Image

    from hkd.data.dataset import build_dataset, load_dataset
    from hkd.koopman.model import HKD
    from hkd.metrics.evaluate import evaluate_variant
    from hkd.metrics.fidelity import register
    from hkd.nn.precond import EDMPrecond
    from hkd.pipeline import variant_paths

    cfg = copy.deepcopy(smoke_cfg)
    cfg["data"].update(count=60, heldout=24)
    cfg["sample"].update(count=24, batch_size=12)
    if extractor == "inception-v3-compat":
        for k in ("classifier_epochs", "classifier_batch_size", "classifier_lr"):
            cfg["evaluate"].pop(k)
        cfg["evaluate"].update(
            feature_extractor="inception-v3-compat",
            inception_weights=_random_inception_weights(tmp_path / "incep.pth", monkeypatch),
        )
    monkeypatch.chdir(tmp_path)
    paths = variant_paths(cfg, "no_hierarchy")
    paths["classifier"] = weights
    build_dataset(cfg, paths["data"], paths["data_manifest"])
    torch.manual_seed(0)
    teacher = EDMPrecond(
        img_resolution=32,
        img_channels=1,
        label_dim=0,
        model_channels=8,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
        channel_mult_emb=2,
    )
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = HKD(teacher, eps=0.002, sigma_max=80.0).eval()
    model.train_stats = None
    evaluate_variant(cfg, paths, "no_hierarchy", model, torch.device("cpu"), None)
    suite = json.loads((tmp_path / paths["variant_metrics"]).read_text())

    def write_pngs(images, folder, from_float):
        folder.mkdir()
        u8 = (
            np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8) if from_float else images
        )  # EDM's rounding
        for i, im in enumerate(u8):
            rgb = np.repeat(im, 3, axis=0) if extractor == "inception-v3-compat" else im
            Image.fromarray(
                rgb.transpose(1, 2, 0).squeeze(-1) if rgb.shape[0] == 1 else rgb.transpose(1, 2, 0)
            ).save(folder / f"{i:06d}.png")
        return str(folder)

    gen = write_pngs(np.load(tmp_path / paths["variant_samples"])["images"], tmp_path / "gen", True)
    ref = write_pngs(load_dataset(paths["data"])["heldout_images"], tmp_path / "ref", True)
    if extractor == "hkd-digit-classifier":
        register()
    direct = torch_fidelity.calculate_metrics(
        input1=gen,
        input2=ref,
        cuda=False,
        isc=True,
        fid=True,
        kid=True,
        kid_subset_size=24,
        isc_splits=10,
        feature_extractor=extractor,
        feature_extractor_weights_path=weights
        if extractor != "inception-v3-compat"
        else cfg["evaluate"]["inception_weights"],
        verbose=False,
        cache=False,
    )
    assert suite["fid"] > 0
    assert suite["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-5)
    assert suite["is_mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-5)
    assert suite["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)
    if extractor == "inception-v3-compat":  # ImageNet classes: no recognisable digit rate
        assert not any(k in suite for k in RECOGNISABLE_KEYS)
    else:  # the rate from the IS logits equals the classifier run on the saved images
        from hkd.metrics.classifier import load_classifier, uint8_to_model

        saved = torch.from_numpy(to_uint8(np.load(tmp_path / paths["variant_samples"])["images"]))
        probs = torch.softmax(load_classifier(weights)[0](uint8_to_model(saved))[1], dim=1)
        assert suite["recognisable_rate"] == float((probs.max(1).values >= 0.9).float().mean())


def test_scorer_matches_torch_fidelity_and_gives_a_sampling_spread(weights):
    """The evaluate stage's Scorer (reference features computed once) gives calculate_metrics'
    numbers, and FID's bootstrap spread shrinks as the generated set grows."""
    from hkd.metrics.fidelity import Scorer

    rng = np.random.default_rng(1)
    ref = to_uint8(rng.uniform(-1, 1, (400, 1, 32, 32)).astype(np.float32))
    gen = to_uint8(np.clip(rng.uniform(-1, 1, (400, 1, 32, 32)) * 0.6 - 0.2, -1, 1).astype(np.float32))
    scorer = Scorer(ref, weights_path=weights, bootstrap=30, seed=0)
    mine = scorer(gen)
    direct = fidelity_metrics(gen, ref, weights_path=weights, kid=True)
    assert mine["fid"] == pytest.approx(direct["frechet_inception_distance"], rel=1e-6)
    assert mine["is_mean"] == pytest.approx(direct["inception_score_mean"], rel=1e-6)
    assert mine["kid_mean"] == pytest.approx(direct["kernel_inception_distance_mean"], rel=1e-5, abs=1e-8)
    assert 0 < mine["fid_sampling_std"] < 0.5 * mine["fid"] and mine["fid_bootstrap"] == 30
    assert scorer(gen)["fid_sampling_std"] == mine["fid_sampling_std"]  # seeded resamples
    small = scorer(gen[:100])
    assert small["fid_sampling_std"] > mine["fid_sampling_std"]
    assert Scorer(ref, weights_path=weights, bootstrap=0)(gen)["fid_sampling_std"] is None


def _brightness_classifier(path) -> str:
    """A hand-set digit classifier whose class-0 logit is 4 x (1 + the image's value) and
    every other logit 0, for an image of one grey value: black (-1) gives class 0 p = 0.1,
    mid-grey (0) p = e^4 / (e^4 + 9) = 0.86, white (+1) p = e^8 / (e^8 + 9) = 0.997."""
    net = DigitClassifier()
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
        for conv in convs:  # channel 0 passes through unchanged (the input shifted by +1, >= 0)
            conv.weight[0, 0, 1, 1] = 1.0
        convs[0].bias[0] = 1.0
        linear = net.features[-2]
        linear.weight[0, :64] = 1.0 / 64  # the mean of channel 0's 8 x 8 map
        net.head.weight[0, 0] = 4.0
    save_torch({"kind": "digit_classifier", "state": net.state_dict(), "heldout_accuracy": 0.0}, path)
    return str(path)


def test_recognisable_rate_counts_the_images_the_classifier_is_sure_of(tmp_path):
    """The Scorer's recognisable digit rate, from the logits it extracts for IS, is the hand
    count of images whose top class has p >= 0.9; its spread comes from FID's resamples."""
    from hkd.metrics.fidelity import RECOGNISABLE_THRESHOLD, Scorer, recognisable

    logits = torch.tensor([[np.log(81.0) + 1e-6] + [0.0] * 9, [np.log(81.0) - 1e-3] + [0.0] * 9])
    assert list(recognisable(logits)) == [True, False]  # p = 0.9 is recognisable, just below is not
    assert RECOGNISABLE_THRESHOLD == 0.9

    weights = _brightness_classifier(tmp_path / "bright.pt")
    values = np.array([255] * 7 + [128] * 9 + [0] * 4, np.uint8)  # 7 of 20 recognisable
    rng = np.random.default_rng(0)
    gen = np.broadcast_to(values[:, None, None, None], (20, 1, 32, 32)).copy()
    ref = rng.integers(0, 256, (40, 1, 32, 32)).astype(np.uint8)
    scores = Scorer(ref, weights_path=weights, bootstrap=50, seed=0)(gen)
    assert scores["recognisable_rate"] == pytest.approx(7 / 20)
    assert scores["recognisable_threshold"] == 0.9
    expected_std = np.sqrt(0.35 * 0.65 / 20)  # the binomial standard error the bootstrap estimates
    assert 0.5 * expected_std < scores["recognisable_rate_std"] < 1.5 * expected_std
    assert Scorer(ref, weights_path=weights, bootstrap=0)(gen)["recognisable_rate_std"] is None
