"""Koopman eigenvalues alpha +- i beta of every block, one panel per level."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hkd.io import atomic_path  # noqa: E402


def plot_spectrum(model, out_png: str) -> dict:
    eig = model.koopman.eigenvalues()
    res = model.unet.skip_resolutions
    n = len(eig)
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    summary = []
    for level, (alpha, beta) in enumerate(eig):
        ax = axes[level // cols][level % cols]
        a, b = alpha.flatten().numpy(), beta.flatten().numpy()
        ax.scatter(a, b, s=2, alpha=0.3, linewidths=0)
        ax.axvline(0, color="grey", lw=0.5)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"level {level}: {alpha.shape[0] * 2} ch, {res[level]}x{res[level]}", fontsize=9)
        ax.set_xlabel("alpha (real part)", fontsize=8)
        ax.set_ylabel("beta (imaginary part)", fontsize=8)
        ax.tick_params(labelsize=7)
        summary.append(
            {
                "level": level,
                "channels": int(alpha.shape[0] * 2),
                "resolution": int(res[level]),
                "alpha_min": float(a.min()),
                "alpha_max": float(a.max()),
                "abs_beta_max": float(abs(b).max()),
            }
        )
    for j in range(n, rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Koopman eigenvalues per level (time in units of sigma_max)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return {"levels": summary}
