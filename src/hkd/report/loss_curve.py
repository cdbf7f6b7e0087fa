"""The HKD training loss as a table (results/<run>/eval/loss.csv), read back from the run's
tensorboard events, for ``dvc plots``; a resumed training logs some steps twice, and the
later value (the one the kept weights went through) wins."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hkd.io import atomic_path

#: tensorboard tags of hkd_train -> table columns
LOSS_TAGS = {
    "hkd/loss_total": "loss_total",
    "hkd/loss_reconstruction_T": "loss_T",
    "hkd/loss_trajectory": "loss_trajectory",
}


def _scalars(event_file: Path) -> list[tuple[float, int, str, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
    acc.Reload()
    tags = [t for t in LOSS_TAGS if t in acc.Tags()["scalars"]]
    return [(e.wall_time, e.step, LOSS_TAGS[t], e.value) for t in tags for e in acc.Scalars(t)]


def loss_table(tensorboard_dir: str) -> pd.DataFrame:
    """One row per logged step: its losses, the last logged value of each step."""
    events = sorted(e for f in Path(tensorboard_dir).glob("events.out.tfevents.*") for e in _scalars(f))
    if not events:
        raise ValueError(f"{tensorboard_dir}: no HKD loss in the tensorboard events")
    frame = pd.DataFrame(events, columns=["wall_time", "step", "tag", "value"])
    frame = frame.drop_duplicates(["step", "tag"], keep="last")
    return frame.pivot(index="step", columns="tag", values="value").reset_index().rename_axis(columns=None)


def write_loss_table(tensorboard_dir: str, path: str) -> None:
    with atomic_path(path) as tmp:
        loss_table(tensorboard_dir).to_csv(tmp, index=False)
