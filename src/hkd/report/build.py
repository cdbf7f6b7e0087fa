"""Render the run's report as one self-contained HTML file (images inlined), so it
displays correctly when opened straight from disk."""

from __future__ import annotations

import base64
import io
import os
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import yaml
from PIL import Image

from hkd.cost.reference import describe, describe_short, newest_reference
from hkd.data.dataset import load_dataset
from hkd.images import grid, to_uint8
from hkd.io import atomic_path, load_json, load_npz, sha256_json
from hkd.pipeline import CONDITIONAL, conditional_config, stage_enabled
from hkd.report.claims import claims
from hkd.report.links import report_links
from hkd.report.tables import (
    NOT_RECORDED,
    main_table,
    main_table_keys,
    recognisable_column,
    render,
    study_table,
    table3,
    table5,
    table6,
    write_tables,
)

PACKAGES = (
    "hkd-repro",
    "torch",
    "torchvision",
    "torch-fidelity",
    "snakemake",
    "dvc",
    "numpy",
    "pandas",
    "jinja2",
    "mlxtend",
    "matplotlib",
    "tensorboard",
)


def image_grid(images: np.ndarray, cols: int = 16, pad: int = 2, scale: int = 2) -> Image.Image:
    """[-1, 1] images [N, C, H, W] -> one PIL grid, white between the images, each pixel
    ``scale`` x ``scale`` (nearest) so small images stay legible in the report."""
    canvas = grid(to_uint8(images), cols, pad, pad_value=255)
    img = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def class_grid(images: np.ndarray, labels: np.ndarray, per_class: int = 8) -> Image.Image:
    """One row per class (ascending) of its first ``per_class`` samples; short rows are
    padded with white."""
    rows = []
    for c in np.unique(labels[labels >= 0]):
        picked = images[labels == c][:per_class]
        pad = np.ones((per_class - len(picked),) + images.shape[1:], images.dtype)
        rows.append(np.concatenate([picked, pad]))
    return image_grid(np.concatenate(rows), cols=per_class)


def sample_grid(samples: dict, k: int) -> Image.Image:
    """A samples file's grid: by class for a conditional sampler (about ``k`` images), else
    its first ``k`` images."""
    labels = samples.get("labels")
    if labels is not None and (labels >= 0).any():
        return class_grid(
            samples["images"], labels, per_class=max(1, k // len(np.unique(labels[labels >= 0])))
        )
    return image_grid(samples["images"][:k])


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
    df["± sampling"] = [
        f"{v:.3f}" if v is not None and not pd.isna(v) else "—"
        for v in df.get("fid_sampling_std", [None] * len(df))
    ]
    df["IS"] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(df["is_mean"], df["is_std"])]
    df["KID × 10³"] = [f"{1e3 * m:.2f} ± {1e3 * s:.2f}" for m, s in zip(df["kid_mean"], df["kid_std"])]
    df["NFE"] = [("—" if pd.isna(v) else str(int(v))) for v in df["nfe"]]
    df = df.rename(columns={"method": "Method", "images": "Images", "fid": "FID"})
    columns = ["Method", "NFE", "Images", "FID", "± sampling", "FID / teacher FID", "IS", "KID × 10³"]
    header = recognisable_column(metrics)
    if header:  # digit-classifier features: whether the samples are digits at all, beside FID
        df[header] = [recognisable_text(r) for r in metrics["rows"]]
        columns.insert(columns.index("FID / teacher FID") + 1, header)
    return df[columns]


def recognisable_text(row: dict) -> str:
    """A row's recognisable digit rate ± its standard deviation over FID's bootstrap
    resamples; "not recorded" for a row scored before the rate existed."""
    rate, std = row.get("recognisable_rate"), row.get("recognisable_rate_std")
    if rate is None:
        return NOT_RECORDED
    return f"{rate:.3f}" if std is None else f"{rate:.3f} ± {std:.3f}"


_SAMPLER_LABELS = {
    "teacher": "EDM teacher (Heun)",
    "hkd": "HKD (one step)",
    "kd": "HKD without Koopman evolution (one step)",
}


def throughput_table(metrics: dict) -> pd.DataFrame:
    rows = []
    for key, t in metrics["throughput"].items():
        rows.append(
            {
                "Sampler": _SAMPLER_LABELS.get(key, "EDM teacher (Heun)"),
                "NFE": t.get("nfe"),
                "Batch": t["batch"],
                "Seconds / batch": t["seconds_per_batch"],
                "Images / s": t["images_per_second"],
            }
        )
    return pd.DataFrame(rows)


def compiled_summary(decisions: dict) -> str:
    """One line per network path of a stage: compiled, eager, or fell back (and why)."""
    lines = []
    for what, d in decisions.items():
        if d["compiled"]:
            lines.append(f"{what}: compiled (compile: {d['mode']}, agreed with eager)")
        elif d["mode"] == "false":
            lines.append(f"{what}: eager (compile: false)")
        else:
            lines.append(f"{what}: eager, fell back ({d['reason']})")
    return "; ".join(lines)


def provenance(cfg: dict, paths: dict, metrics: dict) -> dict:
    """Where the numbers come from: commit, config hash, device, this machine's speed index
    (``hkd bench --reference``) now, and each stage's wall time with the index it started
    with (written by ``hkd <stage>`` under ``results/<run>/logs/timings``, a tier's under
    ``results/<run>/<tier>/logs/timings``): wall times from
    days of different speed can then be told apart."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "not a git checkout"
    timings = []
    folders = [("", paths["run_timings"])]
    if cfg.get("tier"):  # a tier's own stages, beside the run's
        folders.append((f"{cfg['tier']} ", paths["timings"]))
    if cfg[CONDITIONAL]:
        folders.append((f"{CONDITIONAL} ", paths[f"{CONDITIONAL}_timings"]))
    for label, folder in folders:
        for f in sorted(Path(folder).glob("*.json")):
            t = load_json(f)
            timings.append(
                {
                    "stage": label + t["stage"],
                    "seconds": t["seconds"],
                    "finished": t["finished"],
                    "compiled": compiled_summary(t.get("compiled", {})),
                    "speed_index": describe_short(t["speed_index"]) if "speed_index" in t else "not recorded",
                }
            )
    return {
        "commit": commit,
        "config_sha256": sha256_json(cfg),
        "device": metrics["device"],
        "threads": metrics["threads"],
        "precision": metrics["precision"],
        "teacher_precision": metrics.get("teacher_precision", "not recorded"),
        "teacher_origin": metrics.get("teacher_origin", "not recorded"),
        "speed_index": describe(newest_reference()),
        "timings": timings,
    }


def teacher_seeds_note(cfg: dict) -> str:
    """How the teacher's row at the trajectories' NFE was seeded where that is not on the
    evaluation seeds of HKD's row (``sample.teacher_seeds``), else ""."""
    return (
        ""
        if cfg["sample"]["teacher_seeds"] == "evaluation"
        else "the trajectory seeds: their endpoints first"
    )


def table_grids(
    cfg: dict, paths: dict, metrics: dict, data: dict, split: str
) -> dict[str, dict[str, Image.Image]]:
    """{table key: {caption: grid}}: the samples behind each paper table's reproduced rows."""
    k = cfg["report"]["grid_images"]
    teacher_nfe = next(r["nfe"] for r in metrics["rows"] if r["key"] == "teacher")
    note = teacher_seeds_note(cfg)
    real = {"images": data[f"{split}_images"], "labels": data[f"{split}_labels"]}
    by_class = " (one row per class)" if (real["labels"] >= 0).any() else ""
    main = {
        f"Real ({'held-out' if split == 'heldout' else 'training'} split){by_class}": sample_grid(real, k),
        f"EDM teacher, {teacher_nfe} NFE" + (f" ({note})" if note else ""): sample_grid(
            load_npz(paths["samples_teacher"]), k
        ),
    }
    for n in cfg["sample"]["extra_teacher_nfe"]:
        main[f"EDM teacher, {n} NFE"] = sample_grid(
            load_npz(paths["samples_teacher_nfe"].replace("{nfe}", str(n))), k
        )
    variant = {
        v: sample_grid(load_npz(paths["variant_samples"].replace("{variant}", v)), k)
        for v in cfg["ablations"]
    }
    hkd = sample_grid(load_npz(paths["samples_hkd"]), k)
    if "no_koopman" in variant:
        main["KD: HKD without Koopman evolution, 1 NFE"] = variant["no_koopman"]
    paired = not note  # the teacher's row on HKD's evaluation seeds
    main[f"HKD, 1 NFE ({'same noise seeds as the teacher' if paired else 'the evaluation seeds'})"] = hkd
    keys = main_table_keys(cfg)
    out = {keys[0]: main}
    if variant:
        out["table3"] = {
            **{f"Ablation {v.replace('_', ' ')}, 1 NFE": g for v, g in variant.items()},
            "Full HKD, 1 NFE": hkd,
        }
    if cfg[CONDITIONAL]:
        nfe = next(
            r["nfe"] for r in load_json(paths[f"{CONDITIONAL}_metrics"])["rows"] if r["key"] == "teacher"
        )
        out["table4"] = {
            f"Class-conditional EDM teacher, {nfe} NFE (one row per class{'; ' + note if note else ''})": sample_grid(
                load_npz(paths[f"{CONDITIONAL}_samples_teacher"]), k
            ),
            f"Class-conditional HKD, 1 NFE ({'same noise and labels' if paired else 'the evaluation seeds'})": sample_grid(
                load_npz(paths[f"{CONDITIONAL}_samples_hkd"]), k
            ),
        }
    if cfg["hkd"]["snapshot_epochs"]:
        snaps = load_npz(paths["stability_samples"])
        out["table5"] = {"Before training (seed " + str(cfg["seed"]) + ")": image_grid(snaps["before"][:k])}
        for e in cfg["hkd"]["snapshot_epochs"]:
            out["table5"][f"After epoch {e} of {cfg['hkd']['epochs']}"] = image_grid(
                snaps[f"epoch{e:04d}"][:k]
            )
    return out


def figure_context(paths: dict) -> dict:
    """The figures stage's PNGs as data URIs, its numbers, and the viewer's frames (one
    grid per time: rows = teacher state, HKD prediction, HKD latent decoded; columns = seeds)."""
    figs = {
        k: png_data_uri(Path(paths[k]).read_bytes())
        for k in ("fig2", "fig2_consistency", "fig4", "fig4_modes", "fig4_spectrum", "fig5", "fig6")
    }
    viewer = load_npz(paths["viewer"], ("frames", "sigmas", "rows"))
    frames = []
    for f in viewer["frames"]:  # [3, B, C, H, W] uint8
        rows, b = f.shape[0], f.shape[1]
        flat = f.reshape((rows * b,) + f.shape[2:]).astype(np.float32) / 127.5 - 1.0
        frames.append(png_data_uri(image_grid(flat, cols=b, scale=3)))
    return {
        "images": figs,
        "numbers": load_json(paths["figures"]),
        "viewer_frames": frames,
        "viewer_sigmas": [float(x) for x in viewer["sigmas"]],
        "viewer_rows": [str(r) for r in viewer["rows"]],
    }


SUMMARY_FORMATS = {
    "FID": "{:.3f}".format,
    "FID / teacher FID": "{:.2f}".format,
    "Seconds / batch": "{:.4f}".format,
    "Images / s": "{:.1f}".format,
}


def summary_tables(metrics: dict) -> dict:
    """The report's two plain tables (every row's scores, and throughput) as HTML."""
    as_html = dict(index=False, formatters=SUMMARY_FORMATS, classes="tbl", border=0)
    return {
        "metrics": metrics_table(metrics).to_html(**as_html),
        "throughput": throughput_table(metrics).to_html(**as_html),
    }


def paper_and_study_tables(cfg: dict, paths: dict, metrics: dict, study: dict | None) -> tuple[list, list]:
    """The paper's tables this run fills (sorted by key), and the study's table if it ran."""
    paper_tables = [main_table(cfg, metrics, key, study) for key in main_table_keys(cfg)]
    if cfg["ablations"]:
        paper_tables.append(table3(cfg, metrics, study))
    if cfg[CONDITIONAL]:
        paper_tables.append(
            main_table(conditional_config(cfg), load_json(paths[f"{CONDITIONAL}_metrics"]), "table4")
        )
    if cfg["hkd"]["snapshot_epochs"]:
        paper_tables.append(table5(cfg, metrics, load_json(paths["stability"])))
    paper_tables.append(table6(cfg, metrics))
    paper_tables.sort(key=lambda t: t.key)
    extra_tables = [study_table(cfg, metrics, study)] if study is not None and study["recipes"] else []
    return paper_tables, extra_tables


def table_entry(table, tables_rel: str) -> dict:
    """What the template shows of one table: its HTML and links to its .tex / .md files."""
    return {
        "key": table.key,
        "title": table.title,
        "html": render(table, "html"),
        "files": {fmt: f"{tables_rel}/{table.key}.{fmt}" for fmt in ("tex", "md")},
    }


def paper_table_entries(cfg: dict, paper_tables: list, tables_rel: str, grids: dict) -> list[dict]:
    """Each paper table's entry with its sample grids; later main tables point to the first's grids."""
    main_keys = main_table_keys(cfg)
    return [
        {
            **table_entry(t, tables_rel),
            "grids": {name: png_data_uri(img) for name, img in grids.get(t.key, {}).items()},
            "grids_with": (main_keys[0] if t.key in main_keys[1:] else None),
        }
        for t in paper_tables
    ]


def render_index(**context) -> str:
    """index.html from its Jinja template; a missing template variable is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=jinja2.select_autoescape(["html.j2"]),
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("index.html.j2").render(**context)


def build_report(cfg: dict, paths: dict, out_html: str) -> None:
    metrics = load_json(paths["metrics"])
    data = load_dataset(paths["data"])
    split = "heldout" if len(data["heldout_images"]) else "train"
    study = load_json(paths["study"]) if stage_enabled(cfg, "study") else None
    stability = load_json(paths["stability"]) if stage_enabled(cfg, "stability") else None
    paper_tables, extra_tables = paper_and_study_tables(cfg, paths, metrics, study)
    write_tables(paper_tables + extra_tables, paths["tables"])
    tables_rel = os.path.relpath(paths["tables"], Path(out_html).parent)
    grids = table_grids(cfg, paths, metrics, data, split)
    budget = (
        png_data_uri(Path(paths["budget_curves"]).read_bytes()) if stage_enabled(cfg, "stability") else None
    )
    figures = figure_context(paths)
    rows = {r["key"]: r for r in metrics["rows"]}
    html = render_index(
        run=cfg["run"],
        tier=cfg.get("tier"),
        links=report_links(cfg),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        manifest=load_json(paths["data_manifest"]),
        metrics=metrics,
        rows=rows,
        tables=summary_tables(metrics),
        paper_tables=paper_table_entries(cfg, paper_tables, tables_rel, grids),
        study_tables=[table_entry(t, tables_rel) for t in extra_tables],
        claims=claims(metrics, study, figures["numbers"], stability),
        budget_curves=budget,
        study=study,
        provenance=provenance(cfg, paths, metrics),
        hkd=cfg["hkd"],
        trajectories=cfg["trajectories"]["count"],
        fid_ratio=rows["hkd"]["fid"] / rows["teacher"]["fid"],
        seed=cfg["seed"],
        paired_grids=not teacher_seeds_note(cfg),
        spectral=png_data_uri(Path(paths["spectral"]).read_bytes()),
        figures=figures,
        config_yaml=yaml.safe_dump(cfg, sort_keys=False),
        versions=package_versions(),
    )
    with atomic_path(out_html) as tmp:
        tmp.write_text(html, encoding="utf-8")
