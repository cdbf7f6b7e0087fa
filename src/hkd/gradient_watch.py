"""Counting non-finite gradients instead of repairing them silently.

A compiled backward pass that is wrong on some CPU can give NaN gradients while the loss
stays finite; zeroing them (as EDM's training loop does) then freezes those parameters with
no sign. So every training step counts the non-finite gradient elements of each parameter.
A step that has any is reported on the stage's log; more than ``STEP_LIMIT`` such steps in
one run (a stray overflow is tolerated, a broken kernel is not) stops the run with an error
naming the step, the parameters and the ``compile`` key. Steps whose overflow a loss scaler
(fp16) handles by skipping the update are counted apart and never stop the run.
"""

from __future__ import annotations

import torch

from hkd import compile_guard
from hkd.runtime import say

#: steps with non-finite gradients tolerated in one run before it stops
STEP_LIMIT = 3


class NonFiniteGradients(FloatingPointError):
    pass


class GradientWatch:
    """Per-step count of non-finite gradient elements of ``named_parameters``."""

    def __init__(self, named_parameters, what: str, forward=None):
        """``what``: the training step's path name in ``compile_guard`` (how it ran);
        ``forward``: the step's network as ``maybe_compile`` returned it; a compiled one is
        checked against eager again on the call after a step with non-finite gradients."""
        self.params = [(n, p) for n, p in named_parameters if p.requires_grad]
        self.what = what
        self.guard = forward if isinstance(forward, compile_guard.GuardedCompile) else None
        self.bad_steps = 0  # steps with non-finite gradients that nothing else handled
        self.scaler_steps = 0  # overflow steps skipped by the fp16 loss scaler
        self.elements = 0  # non-finite elements over the run
        self.since_log = 0  # ... since the last `take_since_log`

    def count(self, step: int, where: str = "", scaler_skips: bool = False) -> int:
        """Non-finite gradient elements of this step (0: all finite). ``scaler_skips``: a loss
        scaler skips this step's update when there are any."""
        per_param = (
            torch.stack(
                [
                    (~p.grad.isfinite()).sum() if p.grad is not None else torch.zeros((), dtype=torch.long)
                    for _, p in self.params
                ]
            )
            if self.params
            else torch.zeros(0)
        )
        total = int(per_param.sum()) if len(per_param) else 0
        if not total:
            return 0
        self.elements += total
        self.since_log += total
        names = [n for (n, _), c in zip(self.params, per_param.tolist()) if c]
        if scaler_skips:
            self.scaler_steps += 1
            return total
        self.bad_steps += 1
        detail = (
            f"{self.what}: {total} non-finite gradient elements at step {step} in {len(names)} of "
            f"{len(self.params)} parameters ({_list(names)})"
        )
        if self.bad_steps > STEP_LIMIT:
            raise NonFiniteGradients(
                f"{detail}: {self.bad_steps} steps with non-finite gradients, more than "
                f"{STEP_LIMIT}; stopping{where}. {_how_it_ran(self.what)}"
            )
        recheck = ""
        if self.guard is not None and not self.guard.eager:
            self.guard.distrust()
            recheck = "; the compiled step is checked against eager on the next call"
        say(f"warning: {detail} (step {self.bad_steps} of at most {STEP_LIMIT} tolerated){recheck}")
        return total

    def take_since_log(self) -> int:
        n, self.since_log = self.since_log, 0
        return n

    def restore(self, summary: dict | None) -> None:
        """Continue the counts of a resumed run (``summary()`` saved in its resume state)."""
        if summary:
            self.bad_steps = summary["nonfinite_gradient_steps"]
            self.elements = summary["nonfinite_gradient_elements"]
            self.scaler_steps = summary["loss_scaler_overflow_steps"]

    def summary(self) -> dict:
        return {
            "nonfinite_gradient_steps": self.bad_steps,
            "nonfinite_gradient_elements": self.elements,
            "loss_scaler_overflow_steps": self.scaler_steps,
        }


def _how_it_ran(what: str) -> str:
    decision = compile_guard.decisions().get(what)
    if decision is None or not decision["compiled"]:
        return (
            "The step ran eagerly (not a compiler problem): check the data, 'precision' and the learning rate"
        )
    return (
        "The step ran through torch.compile: set 'compile: false' in the config to run it eagerly and compare"
    )


def _list(names: list[str], shown: int = 5) -> str:
    more = f", ... {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
