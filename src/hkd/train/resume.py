"""A trainer's resume state, shared by the teacher and HKD trainers.

Every ``checkpoint_every`` steps a trainer saves the state dicts of its parts (network,
EMA, optimiser, lr schedule, ...), both random generators and its position (step, images
seen, data order) beside its output; a killed run started again restores all of it and
ends with the weights an uninterrupted run would have. A state made from other inputs
(its fingerprint differs) or by an earlier version that lacks a part is ignored, with the
reason printed, and training starts from the beginning. A resumed run keeps its tensorboard
folder, less the events it will log again (``open_writer``).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from hkd.io import load_resume, save_torch

#: the random generators every state holds besides the parts
_RNG_KEYS = ("gen", "torch_rng")


def save_training_state(path: Path, fingerprint: str, parts: dict, gen: torch.Generator, **position) -> None:
    """Write ``parts`` ({name: object with ``state_dict`` or None}), ``gen``, torch's global
    generator and ``position`` (plain values and tensors) to ``path``, atomically."""
    state = {name: part.state_dict() if part is not None else None for name, part in parts.items()}
    save_torch(
        {
            "fingerprint": fingerprint,
            **state,
            "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            **position,
        },
        path,
    )


def restore_training_state(
    path: Path | None,
    fingerprint: str,
    stage: str,
    made_of: str,
    parts: dict,
    gen: torch.Generator,
    position: tuple[str, ...],
) -> dict | None:
    """Load the state at ``path`` into ``parts`` (None entries skipped) and the generators and
    return it, for the ``position`` keys; None when there is none to resume from: no file, an
    unreadable one, other inputs (``made_of`` names them) or missing keys."""
    state = load_resume(path, fingerprint, stage, made_of)
    if state is None:
        return None
    missing = [k for k in (*parts, *_RNG_KEYS, *position) if k not in state]
    if missing:
        print(f"{stage}: ignoring {path}: it lacks {', '.join(missing)} (an earlier version's state)")
        return None
    for name, part in parts.items():
        if part is not None:
            part.load_state_dict(state[name])
    gen.set_state(state["gen"])
    torch.set_rng_state(state["torch_rng"])
    return state


def open_writer(tb_dir: str, resumed: bool, purge_step: int):
    """The trainer's tensorboard writer: a fresh folder, or a resumed run's own with the events
    from ``purge_step`` on dropped (they are logged again)."""
    from torch.utils.tensorboard import SummaryWriter

    if not resumed:
        shutil.rmtree(tb_dir, ignore_errors=True)
    return SummaryWriter(tb_dir, purge_step=purge_step if resumed else None)
