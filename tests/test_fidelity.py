import numpy as np
import pytest
import torch

from hkd.io import save_torch
from hkd.metrics.classifier import DigitClassifier
from hkd.metrics.fidelity import fidelity_metrics
from hkd.sample import to_uint8


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "clf.pt"
    save_torch({"kind": "digit_classifier", "state": DigitClassifier().state_dict(),
                "heldout_accuracy": 0.0, "feature_dim": 128}, path)
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
