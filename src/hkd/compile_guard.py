"""``torch.compile`` that is checked against the plain module before it is trusted.

Compiled CPU kernels (bf16 in particular) depend on the processor: on some machines the
compiled teacher gave NaN samples, or finite losses with NaN gradients, where the eager
module was fine. So every compiled network path is checked against eager at the calls
1, 10, 100, ... of each graph (each input signature: shapes, dtypes, grad mode, autocast
dtype), so also once the network has trained, and on the next call after a trainer saw
non-finite gradients (``distrust``):

- inference (no grad): the compiled output against the eager output on the same input;
- training (grad enabled, parameters that require grad): also the gradients of every
  parameter, taken for one fixed random cotangent of the output through both graphs.

They agree when every result is finite and every tensor's relative L2 difference
``||compiled - eager|| / max(||eager||, floor)`` is within ``TOLERANCE`` of the computation's
dtype (the autocast dtype, else fp32). ``floor`` is 1 % of the size that tensor would have
at the average element magnitude of all tensors of its kind (outputs, or gradients), so a
gradient that is nearly zero in both graphs does not count as a disagreement. After the
check, every compiled output made without grad is also checked to be finite (a reduction,
negligible against a network call).

``compile`` key: ``auto`` = on disagreement or a failed compile, warn (naming the path and
the difference) and run that path eagerly from then on; ``true`` = stop with an error that
names the path and the key; ``false`` = eager, nothing compiled. On Apple MPS every path
runs eagerly, whatever the key says. Dropout draws different
masks in the two graphs, so a training check runs with dropout off (a graph of its own);
the real graph is then covered by the finiteness checks and the trainers' non-finite
gradient counts. What each path did is kept in ``decisions()``, which the stage commands
write beside their wall time (report provenance).
"""

from __future__ import annotations

import contextlib
import math

import torch

from hkd.runtime import say

#: largest relative L2 difference, compiled against eager, that still counts as the same
#: result: fp32 differs only by summation order; bf16 / fp16 autocast round each fused
#: kernel's intermediates differently (measured on the embedded default's network: up to
#: 1.4e-2 on outputs, 4e-2 on a parameter's gradient in bf16), while a wrong kernel is off
#: by O(1) or non-finite
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.15, torch.float16: 0.05}

#: floor of a tensor's norm in the relative difference, as a share of its expected norm
FLOOR_SHARE = 0.01

MODES = ("auto", True, False)

#: why a path on Apple MPS is not compiled: torch.compile's MPS backend is a prototype, and
#: the tolerances above were measured on CPU
MPS_EAGER = "Apple MPS runs eagerly"

#: each graph is checked at its calls 1, 10, 100, ...: a defect that shows only once a
#: network has trained is still caught, for about log10(calls) extra eager calls
RECHECK_BASE = 10

_DECISIONS: dict[str, dict] = {}


def decisions() -> dict[str, dict]:
    """{path: what ran (compiled or eager, and why)} for every path this process built."""
    return {path: dict(d) for path, d in _DECISIONS.items()}


def reset_decisions() -> None:
    _DECISIONS.clear()


def describe(what: str) -> str:
    """How the path ``what`` ran, in words (for logs and error messages)."""
    d = _DECISIONS.get(what)
    if d is None or d["mode"] == "false":
        return f"{what} ran eagerly"
    if not d["compiled"]:
        return f"{what} fell back to eager ({d['reason']})"
    return (
        f"{what} ran compiled (compile: {d['mode']}; agreed with eager in {len(d['checks'])} checks, "
        f"worst {_worst(d['checks'])})"
    )


def _worst(checks: list[dict]) -> str:
    worst = {}
    for c in checks:
        for k, v in c.items():
            if k.startswith("max_rel_diff_"):
                worst[k[len("max_rel_diff_") :]] = max(v, worst.get(k[len("max_rel_diff_") :], 0.0))
    return ", ".join(f"{k} {v:.2g}" for k, v in worst.items()) or "n/a"


def non_finite_message(kind: str, seeds, bad_rows, what: str, log: str = "") -> str:
    """The error for non-finite results of the path ``what``: which seeds, how the path ran,
    and what to try."""
    bad = [int(s) for s, b in zip(seeds, bad_rows) if b]
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    where = f"; the stage's log is {log}" if log else ""
    return (
        f"non-finite {kind} for {len(bad)} of {len(seeds)} seeds in {seeds[0]}..{seeds[-1]} ({shown}); "
        f"{describe(what)}; try 'compile: false' in the config (then 'precision: fp32'){where}"
    )


class CompileDisagrees(RuntimeError):
    """Raised under ``compile: true`` when a compiled path fails or disagrees with eager."""


def hkd_compile(cfg: dict):
    """The compile mode of HKD training: ``hkd_compile``, or ``compile`` where it is null."""
    return cfg["compile"] if cfg["hkd_compile"] is None else cfg["hkd_compile"]


def maybe_compile(module: torch.nn.Module, mode, what: str):
    """``module`` itself (``mode`` false, or its parameters on Apple MPS), or a
    ``GuardedCompile`` of it (``auto`` / true).
    The first call of each graph traces and builds fused kernels (about 0.5-2.5 minutes on
    2 CPU cores with a C++ compiler) and runs the check; later calls reuse both."""
    if mode not in MODES:
        raise ValueError(f"config key 'compile' must be auto, true or false, not {mode!r}")
    if mode is False:
        _DECISIONS[what] = {"mode": "false", "compiled": False, "reason": "compile: false"}
        return module
    if _on_mps(module):
        _DECISIONS[what] = {"mode": str(mode).lower(), "compiled": False, "reason": MPS_EAGER}
        return module
    return GuardedCompile(module, mode, what)


def _on_mps(module: torch.nn.Module) -> bool:
    param = next(module.parameters(), None)
    return param is not None and param.device.type == "mps"


class GuardedCompile:
    """Callable like ``module``; runs its compiled form once that agrees with eager."""

    def __init__(self, module: torch.nn.Module, mode, what: str):
        self.module, self.mode, self.what = module, mode, what
        self.compiled = torch.compile(module)
        self.eager = False  # True once this path fell back
        self.calls: dict[tuple, int] = {}  # calls of each graph so far
        self.suspect = False  # check on the next call, whatever its number

    def distrust(self) -> None:
        """Check the next call against eager (e.g. after non-finite gradients in a step)."""
        self.suspect = True

    def __call__(self, *args, **kwargs):
        if self.eager:
            return self.module(*args, **kwargs)
        if not self.calls:  # a path is listed once it runs (a stage may build one it has no work for)
            _DECISIONS[self.what] = {"mode": str(self.mode).lower(), "compiled": True, "checks": []}
        key = _signature(args, kwargs)
        self.calls[key] = n = self.calls.get(key, 0) + 1
        if self.suspect or _is_power_of(n, RECHECK_BASE):
            self.suspect = False
            self._check(args, kwargs)
            if self.eager:
                return self.module(*args, **kwargs)
        out = self._run_compiled(args, kwargs)
        if not torch.is_grad_enabled() and not _all_finite(out):
            return self._non_finite_later(out, args, kwargs)
        return out

    def _run_compiled(self, args, kwargs):
        try:
            return self.compiled(*args, **kwargs)
        except Exception as exc:  # tracing or the C++ build failed: a compile problem, not the data's
            self._disagree(f"compiling failed ({type(exc).__name__}: {str(exc)[:300]})", exc)
            return self.module(*args, **kwargs)

    def _check(self, args, kwargs) -> None:
        dtype = _compute_dtype(args)
        params = [p for p in self.module.parameters() if p.requires_grad] if torch.is_grad_enabled() else []
        # DDP: no gradient sync for the check's own backward passes
        no_sync = getattr(self.module, "no_sync", contextlib.nullcontext)
        with _dropout_off(self.module) if params else contextlib.nullcontext(), no_sync():
            eager = call_results(self.module, args, kwargs, params)  # the module's own errors propagate
            try:
                compiled = call_results(self.compiled, args, kwargs, params)
            except Exception as exc:
                self._disagree(f"compiling failed ({type(exc).__name__}: {str(exc)[:300]})", exc)
                return
        report = compare(compiled, eager, TOLERANCE[dtype])
        report.update(
            dtype=str(dtype).replace("torch.", ""),
            tolerance=TOLERANCE[dtype],
            signature=_describe(args),
            gradients=bool(params),
        )
        _DECISIONS[self.what]["checks"].append(report)
        if not report["ok"]:
            self._disagree(report["why"])
            return
        say(
            f"torch.compile of {self.what}: agrees with eager on {report['signature']} "
            f"(max relative difference: {_worst([report])}; tolerance {report['tolerance']:g} in "
            f"{report['dtype']})"
        )

    def _non_finite_later(self, out, args, kwargs):
        eager = self.module(*args, **kwargs)
        if not _all_finite(eager):
            return out  # the input or the network itself is at fault, not the compiler
        self._disagree("a later compiled output was non-finite where eager was finite")
        return eager

    def _disagree(self, why: str, cause: Exception | None = None) -> None:
        if self.mode is True:
            raise CompileDisagrees(
                f"torch.compile of {self.what}: {why}; set 'compile: auto' to fall back to "
                "eager automatically, or 'compile: false' to run it eagerly"
            ) from cause
        say(
            f"warning: torch.compile of {self.what}: {why}; running it eagerly from now on "
            "(config key 'compile: auto')"
        )
        self.eager = True
        _DECISIONS[self.what].update(compiled=False, reason=why)


def call_results(fn, args, kwargs, params) -> dict[str, list[torch.Tensor]]:
    """{'outputs': [...], 'gradients': [...]} of one call; the random state is the same for
    every call, so the cotangent (and anything else random) matches between graphs."""
    with _same_random_state():
        out = fn(*args, **kwargs)
        outputs = [t for t in _tensors(out) if t.is_floating_point()]
        if not params:
            return {"outputs": [t.detach().float() for t in outputs]}
        cotangents = [torch.randn(t.shape, device=t.device, dtype=t.dtype) for t in outputs]
        grads = torch.autograd.grad(outputs, params, cotangents, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
    return {"outputs": [t.detach().float() for t in outputs], "gradients": [g.float() for g in grads]}


def compare(compiled: dict, eager: dict, tolerance: float) -> dict:
    """Worst relative difference of each kind of result, and whether they agree."""
    report, whys = {"ok": True}, []
    for kind in eager:
        diffs, bad = _relative_differences(compiled[kind], eager[kind])
        worst = max(diffs) if diffs else 0.0
        report[f"max_rel_diff_{kind}"] = worst
        if bad:
            whys.append(f"{bad} non-finite {kind} tensor(s)")
        elif worst > tolerance:
            whys.append(f"{kind} differ by {worst:.3g} relative (tolerance {tolerance:g})")
    if whys:
        report.update(ok=False, why="; ".join(whys))
    return report


def _relative_differences(compiled: list[torch.Tensor], eager: list[torch.Tensor]) -> tuple[list[float], int]:
    """(per-tensor relative L2 differences, number of tensors non-finite in the compiled
    result but not in eager)."""
    bad = sum(1 for c, e in zip(compiled, eager) if not c.isfinite().all() and e.isfinite().all())
    total = sum(e.numel() for e in eager)
    scale = math.sqrt(
        sum(float(e.double().square().sum()) for e in eager if e.isfinite().all()) / max(total, 1)
    )
    diffs = []
    for c, e in zip(compiled, eager):
        if c.isfinite().all() and e.isfinite().all():
            floor = max(FLOOR_SHARE * scale * math.sqrt(e.numel()), 1e-30)
            diffs.append(float((c - e).double().norm()) / max(float(e.double().norm()), floor))
    return diffs, bad


@contextlib.contextmanager
def _same_random_state():
    """Every random generator (CPU and CUDA) at seed 0 inside, as it was outside."""
    with torch.random.fork_rng(devices=None if torch.cuda.is_available() else []):
        torch.manual_seed(0)
        yield


@contextlib.contextmanager
def _dropout_off(module: torch.nn.Module):
    """Dropout rates of ``module`` set to 0 (UNet blocks keep theirs in ``dropout``)."""
    saved = []
    for m in module.modules():
        for attr in ("dropout", "p") if isinstance(m, torch.nn.Dropout) else ("dropout",):
            value = getattr(m, attr, None)
            if isinstance(value, float) and value > 0:
                saved.append((m, attr, value))
                setattr(m, attr, 0.0)
    try:
        yield
    finally:
        for m, attr, value in saved:
            setattr(m, attr, value)


def _is_power_of(n: int, base: int) -> bool:
    while n % base == 0:
        n //= base
    return n == 1


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _tensors(o)]
    return []


def _all_finite(out) -> bool:
    return all(bool(t.isfinite().all()) for t in _tensors(out) if t.is_floating_point())


def _compute_dtype(args) -> torch.dtype:
    """The autocast dtype in force for the device of the first tensor argument, else fp32."""
    tensors = _tensors(list(args))
    device = tensors[0].device.type if tensors else "cpu"
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.float32


def _signature(args, kwargs) -> tuple:
    parts = [(tuple(t.shape), t.dtype, t.device.type) for t in _tensors([list(args), kwargs])]
    return (tuple(parts), torch.is_grad_enabled(), _compute_dtype(args))


def _describe(args) -> str:
    return ", ".join(f"{tuple(t.shape)} {str(t.dtype).replace('torch.', '')}" for t in _tensors(list(args)))
