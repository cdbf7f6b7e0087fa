"""``device``: auto picks cuda, then Apple MPS, then the CPU; MPS runs eager and in fp32,
never calls a CUDA-only API, and an operator it lacks gets a one-line error that says what
to do. The backends are faked: no test needs a GPU."""

import types

import pytest
import torch

from hkd import compile_guard, runtime
from hkd.failures import is_project_message, mps_missing_op, report_failure
from hkd.teacher import sampler

MPS = torch.device("mps")

#: torch's error for an operator without an MPS kernel (aten/src/ATen/mps/MPSFallback.mm)
MISSING_OP = (
    "The operator 'aten::_upsample_bicubic2d_aa.out' is not currently implemented for the MPS "
    "device. If you want this op to be added in priority during the prototype phase of this "
    "feature, please comment on https://github.com/pytorch/pytorch/issues/77764. As a temporary "
    "fix, you can set the environment variable `PYTORCH_ENABLE_MPS_FALLBACK=1` to use the CPU as "
    "a fallback for this op. WARNING: this will be slower than running natively on MPS."
)


def fake_backends(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def no_cuda_calls(monkeypatch) -> None:
    """Any CUDA-only call from here on fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a CUDA-only API was called on MPS")

    for name in ("synchronize", "get_device_name", "is_bf16_supported", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, refuse)


@pytest.mark.parametrize(
    "cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    fake_backends(monkeypatch, cuda, mps)
    assert runtime.pick_device("auto") == torch.device(expected)


def test_explicit_mps_without_mps_is_a_clear_one_line_error(monkeypatch):
    fake_backends(monkeypatch, cuda=True, mps=False)
    with pytest.raises(RuntimeError, match="config 'device: mps' but Apple MPS is not available") as caught:
        runtime.pick_device("mps")
    assert is_project_message(caught.value)  # printed as one line, without a traceback
    fake_backends(monkeypatch, cuda=False, mps=True)
    assert runtime.pick_device("mps") == MPS


@pytest.mark.parametrize("precision", ["auto", "bf16", "fp16", "fp32"])
def test_mps_runs_fp32_whatever_the_precision_keys_say(monkeypatch, precision):
    """None = no autocast: plain fp32, for HKD's ``precision`` and the teacher's alike, even
    where the CPU beside the GPU has bf16 instructions."""
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    no_cuda_calls(monkeypatch)
    assert runtime.resolve_precision(precision, MPS) is None
    assert runtime.teacher_dtype({"teacher_precision": precision}, MPS) is None


def test_auto_device_on_a_mac_sets_up_mps_in_fp32(monkeypatch):
    fake_backends(monkeypatch, cuda=False, mps=True)
    no_cuda_calls(monkeypatch)
    monkeypatch.setattr(runtime, "setup_threads", lambda threads: None)
    assert runtime.torch_setup({"device": "auto", "precision": "bf16"}, None) == (MPS, None)


class OnMps(torch.nn.Module):
    """A module whose parameters report the MPS device (none can be made without one)."""

    def parameters(self, recurse=True):
        yield types.SimpleNamespace(device=MPS)


@pytest.mark.parametrize("mode", ["auto", True])
def test_mps_networks_run_eagerly_whatever_compile_says(monkeypatch, mode):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.compile was called for an MPS network")

    monkeypatch.setattr(torch, "compile", refuse)
    compile_guard.reset_decisions()
    net = OnMps()
    assert compile_guard.maybe_compile(net, mode, "the teacher denoiser") is net
    decision = compile_guard.decisions()["the teacher denoiser"]
    assert decision["compiled"] is False and decision["reason"] == compile_guard.MPS_EAGER
    assert "eager" in compile_guard.describe("the teacher denoiser")


def test_the_teacher_ode_state_is_float32_where_float64_is_missing(monkeypatch):
    """MPS has no float64: the Heun state takes ``widest_float`` of its device (float64
    elsewhere)."""
    assert runtime.widest_float(MPS) == torch.float32
    assert runtime.widest_float(torch.device("cpu")) == torch.float64
    noise, sigmas = torch.ones(2, 1, 4, 4), sampler.edm_sigmas(3, 0.002, 80.0, 7.0)
    states = sampler.heun_sample(lambda x, s: 0 * x, noise, sigmas, keep_states=True)[1]
    assert {s.dtype for s in states} == {torch.float64}
    monkeypatch.setattr(sampler, "widest_float", lambda device: torch.float32)
    states = sampler.heun_sample(lambda x, s: 0 * x, noise, sigmas, keep_states=True)[1]
    assert {s.dtype for s in states} == {torch.float32}


def test_timing_and_naming_mps_call_no_cuda_api(monkeypatch):
    no_cuda_calls(monkeypatch)
    synced = []
    monkeypatch.setattr(torch.mps, "synchronize", lambda: synced.append(True))
    runtime.synchronize(MPS)
    assert synced == [True]
    assert runtime.device_name(MPS).startswith("Apple MPS GPU (")


def test_an_operator_missing_on_mps_is_named_with_its_workarounds(capsys):
    try:
        raise NotImplementedError(MISSING_OP)
    except NotImplementedError as exc:
        assert report_failure("trajectories", exc, log=None) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == (
        "hkd trajectories: error: the operator aten::_upsample_bicubic2d_aa.out is not "
        "implemented on Apple MPS; set PYTORCH_ENABLE_MPS_FALLBACK=1 to run it on the CPU, "
        "or use 'device: cpu' in the config (traceback above)"
    )
    assert mps_missing_op(NotImplementedError("abstract method")) is None
    assert mps_missing_op(RuntimeError(MISSING_OP)) is None
