"""Matplotlib figures of the analysis stage: labelled image grids, curves, and the
eigenvalue spectrum with the band edges."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hkd.analysis.modes import mode_ranks  # noqa: E402
from hkd.images import grid  # noqa: E402
from hkd.io import atomic_path  # noqa: E402


def _save(fig, path: str) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def compose(rows: np.ndarray, pad: int = 2) -> np.ndarray:
    """[R, K, C, H, W] images in [-1, 1] -> one [R*(H+pad)+pad, K*(W+pad)+pad, 3] float
    canvas in [0, 1], white between the images (grey images drawn as RGB)."""
    r, k, c, h, w = rows.shape
    img = np.clip((rows.reshape(r * k, c, h, w) + 1) / 2, 0, 1)
    canvas = grid(img, k, pad, pad_value=1.0)
    return np.repeat(canvas, 3, axis=-1) if c == 1 else canvas


def labelled_grid(
    rows: np.ndarray, col_labels: list[str], row_labels: list[str], title: str, path: str
) -> None:
    """Image grid with a label per column and per row."""
    r, k, _, h, w = rows.shape
    canvas = compose(rows)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.75 * k + 1.5), max(2.0, 0.75 * r + 1.0)))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([2 + j * (w + 2) + w / 2 for j in range(k)])
    ax.set_xticklabels(col_labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks([2 + i * (h + 2) + h / 2 for i in range(r)])
    ax.set_yticklabels(row_labels, fontsize=7)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize=8)
    _save(fig, path)


def _finish_lines(fig, ax, xlabel: str, ylabel: str, title: str, path: str) -> None:
    """Labels, grid, legend and title of a line plot, then the file."""
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def curve_plot(
    x: np.ndarray,
    curves: dict[str, np.ndarray],
    xlabel: str,
    ylabel: str,
    title: str,
    path: str,
    logx: bool = False,
) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, y in curves.items():
        ax.plot(x, y, marker="o", ms=2.5, lw=1.2, label=name)
    if logx:
        ax.set_xscale("log")
    _finish_lines(fig, ax, xlabel, ylabel, title, path)


def errorbar_plot(
    series: dict[str, tuple], xlabel: str, ylabel: str, title: str, path: str, logy: bool = False
) -> None:
    """One line with error bars per series {name: (x, y, yerr)}."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, marker="o", ms=2.5, lw=1.2, capsize=2, label=name)
    if logy:
        ax.set_yscale("log")
    _finish_lines(fig, ax, xlabel, ylabel, title, path)


def spectrum_bands_plot(model, edges: list[float], path: str, by: str = "abs_alpha") -> list[dict]:
    """Per level: histogram of |alpha| (or alpha, ``by``) with the band edges (as values of
    it) marked; returns those values, so the bands are stated next to the figure."""
    eig = model.koopman.eigenvalues()
    ranks = mode_ranks(model, by)
    key = "|alpha|" if by == "abs_alpha" else "alpha"
    n = len(eig)
    fig, axes = plt.subplots(1, n, figsize=(2.8 * n, 2.6), squeeze=False)
    out = []
    for level, ((alpha, beta), q) in enumerate(zip(eig, ranks)):
        a, qq = (alpha.abs() if by == "abs_alpha" else alpha).flatten().numpy(), q.flatten().numpy()
        cuts = []
        for e in edges[1:-1]:
            inside = a[qq >= e]
            cuts.append(float(inside.min()) if len(inside) else float("nan"))
        ax = axes[0][level]
        ax.hist(a, bins=60, color="tab:blue", alpha=0.8)
        for c in cuts:
            ax.axvline(c, color="tab:red", lw=0.8)
        ax.set_title(f"level {level}: {len(a)} pairs", fontsize=8)
        ax.set_xlabel(key, fontsize=7)
        ax.tick_params(labelsize=6)
        out.append(
            {
                "level": level,
                "pairs": int(len(a)),
                "alpha_min": float(a.min()),
                "alpha_max": float(a.max()),
                "band_edges_alpha": cuts,
                "abs_beta_max": float(np.abs(beta.numpy()).max()),
            }
        )
    fig.suptitle(f"Koopman {key} per level; red: band edges", fontsize=9)
    _save(fig, path)
    return out
