"""Render the run's report as one self-contained HTML file (images inlined), so it
displays correctly when opened straight from disk."""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml
from PIL import Image

from hkd.data.dataset import load_dataset
from hkd.io import atomic_path, load_json, load_npz
from hkd.report.paper import TABLE3_FID

PACKAGES = ("hkd-repro", "torch", "torchvision", "torch-fidelity", "snakemake", "dvc", "numpy",
            "pandas", "jinja2", "mlxtend", "matplotlib", "tensorboard")


def image_grid(images: np.ndarray, cols: int = 16, pad: int = 2, scale: int = 2) -> Image.Image:
    """[-1, 1] images [N, C, H, W] -> one PIL grid."""
    n, c, h, w = images.shape
    rows = (n + cols - 1) // cols
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
    u8 = np.clip(images * 127.5 + 128, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = u8[i]
    img = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def png_data_uri(img: Image.Image | bytes) -> str:
    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        img = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(img).decode("ascii")


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def metrics_table(metrics: dict) -> pd.DataFrame:
    df = pd.DataFrame(metrics["rows"])
    teacher_fid = df.loc[df["key"] == "teacher", "fid"].iloc[0]
    df["FID / teacher FID"] = df["fid"] / teacher_fid
    df["IS"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(df["is_mean"], df["is_std"])]
    df["NFE"] = [("—" if pd.isna(v) else str(int(v))) for v in df["nfe"]]
    df = df.rename(columns={"method": "Method", "images": "Images", "fid": "FID"})
    return df[["Method", "NFE", "Images", "FID", "FID / teacher FID", "IS"]]


def throughput_table(metrics: dict) -> pd.DataFrame:
    rows = []
    for key, label in (("teacher", "EDM teacher (Heun)"), ("hkd", "HKD (one step)")):
        t = metrics["throughput"][key]
        rows.append({"Sampler": label, "Batch": t["batch"], "Seconds / batch": t["seconds_per_batch"],
                     "Images / s": t["images_per_second"]})
    return pd.DataFrame(rows)


#: Table 3 columns: is each component on? (Koopman evolution, trajectory-consistency, hierarchy)
_COMPONENTS = {"no_koopman": (False, False, True), "no_trajectory": (True, False, True),
               "no_hierarchy": (True, True, False), "full": (True, True, True)}


def ablation_table(metrics: dict, ablations: dict[str, dict]) -> tuple[pd.DataFrame, dict]:
    """Table 3: the full HKD (this run's evaluate row) and each trained ablation, in the
    paper's row order, with the paper's CIFAR-10 FID beside the reproduced one; plus
    whether the paper's ordering (full best, no Koopman worst) holds here."""
    fid = {k: m["fid"] for k, m in ablations.items()}
    fid["full"] = next(r["fid"] for r in metrics["rows"] if r["key"] == "hkd")
    rows = []
    for key in ("no_koopman", "no_trajectory", "no_hierarchy", "full"):
        if key not in fid:
            continue
        on = _COMPONENTS[key]
        rows.append({"Koopman evolution": "yes" if on[0] else "no", "Trajectory consistency": "yes" if on[1] else "no",
                     "Hierarchy": "yes" if on[2] else "no", "FID (this run)": fid[key],
                     "FID / full HKD (this run)": fid[key] / fid["full"],
                     "FID (paper, CIFAR-10)": TABLE3_FID[key],
                     "FID / full (paper)": TABLE3_FID[key] / TABLE3_FID["full"]})
    ordering = {"full_best": all(fid["full"] < v for k, v in fid.items() if k != "full"),
                "no_koopman_worst": (all(fid["no_koopman"] > v for k, v in fid.items() if k != "no_koopman")
                                     if "no_koopman" in fid else None)}
    return pd.DataFrame(rows), ordering


def build_report(cfg: dict, paths: dict, out_html: str) -> None:
    metrics = load_json(paths["metrics"])
    manifest = load_json(paths["data_manifest"])
    data = load_dataset(paths["data"])
    split = "heldout" if len(data["heldout_images"]) else "train"
    k = cfg["report"]["grid_images"]
    grids = {
        f"Real ({'held-out' if split == 'heldout' else 'training'} split)": image_grid(data[f"{split}_images"][:k]),
        f"EDM teacher, {next(r['nfe'] for r in metrics['rows'] if r['key'] == 'teacher')} NFE": image_grid(load_npz(paths["samples_teacher"])["images"][:k]),
        "HKD, 1 NFE (same noise seeds as the teacher)": image_grid(load_npz(paths["samples_hkd"])["images"][:k]),
    }
    fmt = {"FID": "{:.3f}".format, "FID / teacher FID": "{:.2f}".format,
           "Seconds / batch": "{:.4f}".format, "Images / s": "{:.1f}".format}
    tables = {
        "metrics": metrics_table(metrics).to_html(index=False, formatters=fmt, classes="tbl", border=0),
        "throughput": throughput_table(metrics).to_html(index=False, formatters=fmt, classes="tbl", border=0),
    }
    ablations = {v: load_json(paths["ablation_metrics"].replace("{variant}", v)) for v in cfg["ablations"]}
    table3 = None
    if ablations:
        df, ordering = ablation_table(metrics, ablations)
        for v in cfg["ablations"]:
            samples = load_npz(paths["ablation_samples"].replace("{variant}", v))["images"][:k]
            grids[f"Ablation {v.replace('_', ' ')}, 1 NFE"] = image_grid(samples)
        fmt3 = {c: "{:.3f}".format for c in ("FID (this run)", "FID (paper, CIFAR-10)")}
        fmt3.update({c: "{:.2f}".format for c in ("FID / full HKD (this run)", "FID / full (paper)")})
        table3 = {"html": df.to_html(index=False, formatters=fmt3, classes="tbl", border=0), "ordering": ordering,
                  "steps": {v: (a.get("training") or {}).get("steps") for v, a in ablations.items()}}
    rows = {r["key"]: r for r in metrics["rows"]}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
                             autoescape=jinja2.select_autoescape(["html"]), undefined=jinja2.StrictUndefined)
    html = env.get_template("index.html.j2").render(
        run=cfg["run"], generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        manifest=manifest, metrics=metrics, rows=rows, tables=tables, table3=table3,
        hkd=cfg["hkd"], trajectories=cfg["trajectories"]["count"],
        fid_ratio=rows["hkd"]["fid"] / rows["teacher"]["fid"],
        grids={name: png_data_uri(img) for name, img in grids.items()},
        spectral=png_data_uri(Path(paths["spectral"]).read_bytes()),
        config_yaml=yaml.safe_dump(cfg, sort_keys=False), versions=package_versions(),
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
