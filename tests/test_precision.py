"""The teacher's precision on the paper path: attention's query-key product and softmax stay
fp32 under autocast, and the paper configs' teacher denoiser (fp32, through the code the
trajectories run) matches a float64 evaluation of the same weights, where bf16 does not."""

import copy
import math

import pytest
import torch

from hkd.config import load_config
from hkd.nn.precond import EDMPrecond, edm_coefficients
from hkd.nn.unet import attention_weights
from hkd.runtime import resolve_precision, teacher_dtype
from hkd.teacher.network import teacher_kwargs
from hkd.teacher.trajectories import make_denoiser

CPU = torch.device("cpu")
PAPER = ("cifar10", "cifar10_cond", "ffhq64")
SIGMAS = (0.02, 0.5, 2.0, 10.0, 80.0)

#: largest |D_fp32 - D_fp64| accepted. fp32 rounds each operation to 2^-24 (6e-8) relative;
#: over this network's ~20 layers on D of magnitude ~1 that stays near 1e-6 (1.3e-6 measured on
#: the full CIFAR-10 network, workflow/scripts/bench_teacher_precision.py). bf16 keeps 8
#: mantissa bits (2^-9 = 2e-3 relative) and moves D by ~1e-2 there. 1e-4 lies two orders of
#: magnitude from each.
FP32_TOLERANCE = 1e-4


def test_attention_weights_stay_fp32_under_autocast():
    """bf16 queries and keys (as the qkv convolution makes them under autocast) give the same
    weights under bf16 autocast as the plain fp32 computation; the unguarded einsum would be
    cast back to bf16."""
    gen = torch.Generator().manual_seed(0)
    q, k = (torch.randn(4, 32, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
    fp32 = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(32)).softmax(dim=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        guarded = attention_weights(q, k)
        unguarded = torch.einsum("ncq,nck->nqk", q.float(), k.float() / math.sqrt(32))
    assert guarded.dtype == torch.float32 and torch.equal(guarded, fp32)
    assert unguarded.dtype == torch.bfloat16  # what the guard is for
    assert attention_weights(q.double(), k.double()).dtype == torch.float64  # references stay fp64


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_sample_the_teacher_in_fp32(repo, name):
    """The teacher's ODE runs in fp32 on every device, whatever ``precision`` (HKD's) says."""
    cfg = load_config(repo / "configs" / f"{name}.yaml")
    assert cfg["teacher_precision"] == "fp32"
    assert teacher_dtype(cfg, CPU) is None and teacher_dtype(cfg, torch.device("cuda")) is None


def small_paper_teacher(repo) -> tuple[dict, EDMPrecond]:
    """configs/cifar10.yaml with its network shrunk (width 32, one block per level, 16x16
    images; attention at 16x16 as in the config, and in the bottleneck), weights drawn at unit
    gain: EDM's 1e-5 initialisation of output and attention projections would leave D close
    to c_skip x whatever the precision of the layers."""
    cfg = load_config(repo / "configs" / "cifar10.yaml")
    cfg["network"].update(model_channels=32, num_blocks=1)
    cfg["data"]["resolution"] = 16
    torch.manual_seed(0)
    net = EDMPrecond(**teacher_kwargs(cfg)).eval().requires_grad_(False)
    gen = torch.Generator().manual_seed(1)
    for pname, p in net.named_parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        elif pname.endswith("bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    assert any(b.num_heads for b in net.model.enc.values() if hasattr(b, "num_heads"))
    return cfg, net


def d_fp64(net: EDMPrecond, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """D(x; sigma) with the same weights in float64 (EDM's preconditioning, U-Net in fp64)."""
    unet = copy.deepcopy(net.model).double()
    x, sigma = x.double(), sigma.double().reshape(-1, 1, 1, 1)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, net.sigma_data)
    with torch.no_grad():
        return c_skip * x + c_out * unet(c_in * x, c_noise.flatten())


def test_paper_teacher_denoiser_matches_fp64_and_bf16_does_not(repo):
    cfg, net = small_paper_teacher(repo)
    gen = torch.Generator().manual_seed(2)
    shape = (2, 3, 16, 16)
    sigma = torch.tensor(SIGMAS).repeat_interleave(shape[0])
    y = (torch.rand(shape, generator=gen) * 2 - 1).repeat(len(SIGMAS), 1, 1, 1)
    x = y + sigma.reshape(-1, 1, 1, 1) * torch.randn(y.shape, generator=gen)
    reference = d_fp64(net, x, sigma)
    paper = make_denoiser(net, CPU, teacher_dtype(cfg, CPU))(x, sigma)
    bf16 = make_denoiser(net, CPU, resolve_precision("bf16", CPU))(x, sigma)
    assert reference.abs().max() > 0.5  # the network moves D: the comparison means something
    fp32_error = (paper.double() - reference).abs().max().item()
    bf16_error = (bf16.double() - reference).abs().max().item()
    assert fp32_error < FP32_TOLERANCE, fp32_error
    assert bf16_error > FP32_TOLERANCE, bf16_error
