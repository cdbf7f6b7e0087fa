"""The README's picture of what a run's report shows: the teacher's and HKD's first samples
on the same seeds, with their FIDs, beside the budget curves.

    python workflow/scripts/readme_picture.py --run results/budget_curve --out docs/report-preview.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402


def sample_grid(npz: Path, count: int = 36) -> np.ndarray:
    images = torch.from_numpy(np.load(npz)["images"][:count]).clamp(-1, 1) * 0.5 + 0.5
    return make_grid(images, nrow=6, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()


def row_title(metrics: dict, key: str, name: str) -> str:
    row = next(r for r in metrics["rows"] if r["key"] == key)
    return f"{name}, {row['nfe']} NFE\nFID {row['fid']:.1f} ± {row['fid_sampling_std']:.1f} ({row['images']} images)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a finished run folder, e.g. results/budget_curve")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    run = Path(args.run)
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4), gridspec_kw={"width_ratios": [1, 1, 1.5]})
    for ax, (key, name) in zip(axes, (("teacher", "EDM teacher"), ("hkd", "HKD, one step"))):
        ax.imshow(sample_grid(run / "samples" / f"{key}.npz"))
        ax.set_title(row_title(metrics, key, name), fontsize=9)
    axes[2].imshow(mpimg.imread(run / "eval" / "budget_curves.png"))
    axes[2].set_title("Budget curve: FID against training", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)


if __name__ == "__main__":
    main()
