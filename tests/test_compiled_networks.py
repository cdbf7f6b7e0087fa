"""The embedded default's real networks (its width, its precision on this CPU) through the
compile guard with ``compile: auto``, against eager: the teacher denoiser, the teacher
training step and the HKD training step. Whatever this CPU's compiled kernels do, the path
that ``auto`` runs must give eager's results within the guard's tolerance, with finite
gradients; the test prints whether the compiled graph was kept or the guard fell back.
Each test builds its graphs from scratch (about 1-2 minutes on 2 cores)."""

from pathlib import Path

import pytest
import torch

from hkd import compile_guard
from hkd.compile_guard import TOLERANCE, compare, maybe_compile
from hkd.config import load_config
from hkd.koopman.model import HKD
from hkd.nn.precond import EDMPrecond
from hkd.runtime import resolve_precision
from hkd.teacher.network import teacher_kwargs
from hkd.teacher.sampler import edm_sigmas, heun_sample, seeded_noise
from hkd.teacher.train import edm_loss
from hkd.teacher.trajectories import make_denoiser
from hkd.train.hkd_train import hkd_loss
from hkd.train.objective import sample_times

CPU = torch.device("cpu")
CFG = load_config(str(Path(__file__).resolve().parents[1] / "configs" / "default.yaml"))
DTYPE = resolve_precision(CFG["precision"], CPU)  # bf16 on CPUs with bf16 instructions
TOL = TOLERANCE[DTYPE or torch.float32]
RES = CFG["data"]["resolution"]


@pytest.fixture(autouse=True)
def fresh_compiler():
    torch._dynamo.reset()
    compile_guard.reset_decisions()
    yield
    torch._dynamo.reset()


def default_teacher() -> EDMPrecond:
    """The default config's teacher with every weight moved off EDM's near-zero
    initialisation, so each layer shapes the output as in a trained network."""
    torch.manual_seed(0)
    net = EDMPrecond(**teacher_kwargs(CFG))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.to(memory_format=torch.channels_last)


def report(what: str) -> dict:
    d = compile_guard.decisions()[what]
    print(f"\n{compile_guard.describe(what)}; checks: {d.get('checks')}")
    return d


def test_default_teacher_denoiser_through_the_guard():
    net = default_teacher().eval().requires_grad_(False)
    noise = seeded_noise(range(8), (1, RES, RES))
    sigmas = edm_sigmas(4, CFG["edm"]["sigma_min"], CFG["edm"]["sigma_max"], CFG["edm"]["rho"])
    eager = heun_sample(make_denoiser(net, CPU, DTYPE), noise, sigmas)
    guarded = heun_sample(make_denoiser(net, CPU, DTYPE, compile="auto", what="denoiser"), noise, sigmas)
    assert torch.isfinite(guarded).all()
    diff = compare({"outputs": list(guarded)}, {"outputs": list(eager)}, TOL)
    assert diff["ok"], diff
    report("denoiser")


def grads_of(net) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in net.parameters() if p.requires_grad]


def assert_guarded_step_matches_eager(step, module, what: str) -> None:
    """``step(forward)``: a training step's {'outputs': [loss], 'gradients': [...]} when the
    module is called through ``forward``; the guarded path's must be finite and eager's."""
    eager = step(module)
    guarded = step(maybe_compile(module, "auto", what))
    assert all(torch.isfinite(g).all() for g in guarded["gradients"])
    diff = compare(guarded, eager, TOL)
    assert diff["ok"], diff
    report(what)


def test_default_teacher_training_step_through_the_guard():
    net = default_teacher().train()
    images = torch.rand(32, 1, RES, RES) * 2 - 1
    edm = CFG["edm"]

    def step(forward):
        net.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(3)
        loss = edm_loss(
            forward, images, gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], CPU, DTYPE
        ).mean()
        loss.backward()
        return {"outputs": [loss.detach()], "gradients": grads_of(net)}

    assert_guarded_step_matches_eager(step, net, "teacher step")


def test_default_hkd_training_step_through_the_guard():
    model = HKD(default_teacher().eval(), eps=CFG["edm"]["sigma_min"], sigma_max=CFG["edm"]["sigma_max"])
    model.unet.to(memory_format=torch.channels_last)
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.01), b.normal_(0, 0.05)
    sigmas = edm_sigmas(
        CFG["trajectories"]["num_steps"], CFG["edm"]["sigma_min"], CFG["edm"]["sigma_max"], CFG["edm"]["rho"]
    )
    states = torch.randn(4, len(sigmas), 1, RES, RES) * sigmas[:, None, None, None].float().clamp(min=0.5)
    t = sample_times(4, CFG["hkd"]["time_points"], sigmas, torch.Generator().manual_seed(1))

    def step(forward):
        model.zero_grad(set_to_none=True)
        loss = hkd_loss(forward, states, sigmas, t, CPU, DTYPE).sum(1).mean()
        loss.backward()
        return {"outputs": [loss.detach()], "gradients": grads_of(model)}

    assert_guarded_step_matches_eager(step, model, "hkd step")
