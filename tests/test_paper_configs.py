"""The paper configs: valid, EDM's architectures, and every network they build runs (CPU,
random weights, no download)."""

import pytest
import torch

from hkd.config import load_config
from hkd.koopman.model import HKD
from hkd.nn.precond import EDMPrecond
from hkd.teacher.network import teacher_kwargs

#: parameters of these DDPM++ networks (EDM-compatible names and shapes; the paper quotes ~56 M for CIFAR-10)
EDM_PARAMETERS = {"cifar10": 55_733_891, "cifar10_cond": 55_735_299, "ffhq64": 61_805_571}


@pytest.mark.parametrize("name", sorted(EDM_PARAMETERS))
def test_networks_build_and_run(repo, name):
    cfg = load_config(repo / "configs" / f"{name}.yaml")
    torch.manual_seed(0)
    teacher = EDMPrecond(**teacher_kwargs(cfg)).eval().requires_grad_(False)
    assert sum(p.numel() for p in teacher.parameters()) == EDM_PARAMETERS[name]
    res, ch, label_dim = cfg["data"]["resolution"], teacher.img_channels, cfg["network"]["label_dim"]
    assert (ch, label_dim) == (3, 10 if name.endswith("cond") else 0)
    x = torch.randn(1, ch, res, res)
    labels = torch.nn.functional.one_hot(torch.tensor([4]), label_dim).float() if label_dim else None
    with torch.no_grad():
        d = teacher(x * 5, torch.tensor([5.0]), labels)
        model = HKD(teacher, eps=cfg["edm"]["sigma_min"], sigma_max=cfg["edm"]["sigma_max"]).eval()
        y = model.sample(x, labels)
    assert d.shape == y.shape == x.shape and torch.isfinite(d).all() and torch.isfinite(y).all()
    # the Koopman levels: every skip tensor and the bottleneck, one operator per position
    levels = model.koopman.eigenvalues()
    assert len(levels) == len(model.unet.skip_channels) > 3 * len(cfg["network"]["channel_mult"])
