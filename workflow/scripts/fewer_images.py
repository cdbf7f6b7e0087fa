"""Do fewer generated images still rank the rows? Scores the first N images of every row a
finished run sampled (teacher at each NFE, HKD, each variant) for several N, against the
same reference as the run, with FID's bootstrap spread, and prints FID, FID / teacher and
the order of the rows for each N.

    python workflow/scripts/fewer_images.py --config configs/default.yaml --counts 1000 2000 4000

Reads results/<run>/ only (samples, data, classifier); writes nothing unless --out FILE.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

from hkd.config import load_config  # noqa: E402
from hkd.data.dataset import load_dataset  # noqa: E402
from hkd.io import load_npz  # noqa: E402
from hkd.pipeline import run_paths, run_variants  # noqa: E402


def row_files(cfg: dict, paths: dict) -> dict[str, str]:
    """{row: its samples file} of every row the run has sampled."""
    files = {"teacher": paths["samples_teacher"], "hkd": paths["samples_hkd"]}
    for n in cfg["sample"]["extra_teacher_nfe"]:
        files[f"teacher_nfe{n}"] = paths["samples_teacher_nfe"].replace("{nfe}", str(n))
    for v in run_variants(cfg):
        files[v] = paths["variant_samples"].replace("{variant}", v)
    return {k: f for k, f in files.items() if Path(f).is_file()}


def scores_by_count(cfg: dict, counts: list[int]) -> dict:
    """{N: {row: {fid, fid_sampling_std, ratio}}}: every row's first N images scored."""
    import torch

    from hkd.images import to_uint8
    from hkd.metrics.evaluate import make_scorer

    paths = run_paths(cfg)
    scorer, _ = make_scorer(cfg, paths, load_dataset(paths["data"]), torch.device("cpu"))
    images = {k: load_npz(f, ("images",))["images"] for k, f in row_files(cfg, paths).items()}
    out = {}
    for n in counts:
        rows = {k: scorer(to_uint8(v[:n])) for k, v in images.items() if len(v) >= n}
        teacher = rows["teacher"]["fid"]
        out[n] = {
            k: {"fid": s["fid"], "fid_sampling_std": s["fid_sampling_std"], "ratio": s["fid"] / teacher}
            for k, s in rows.items()
        }
    return out


def report(result: dict) -> str:
    lines = []
    for n, rows in result.items():
        order = sorted(rows, key=lambda k: rows[k]["fid"])
        lines.append(f"N = {n}: order {' < '.join(order)}")
        for k in order:
            r = rows[k]
            lines.append(
                f"  {k:28s} FID {r['fid']:7.2f} ± {r['fid_sampling_std']:.2f}   / teacher {r['ratio']:.3f}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--counts", type=int, nargs="+", default=[1000, 2000, 4000])
    ap.add_argument("--out", default=None, help="also write the numbers as JSON")
    args = ap.parse_args(argv)
    result = scores_by_count(load_config(args.config), args.counts)
    print(report(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
