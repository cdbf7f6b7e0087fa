"""Links between a run's report and the reports of its tiers.

A tier (configs/claims.yaml over the default) writes its report to a folder of its own, so the
run's report, the page a user opens first, points to it, and the tier's report points back.
The links are relative, so the reports folder can be moved or served as it is.
"""

from __future__ import annotations

import os
from pathlib import Path

from hkd.config import load_config
from hkd.pipeline import TIER_CONFIGS, extended_file, run_paths


def _relative(target: str | Path, report: str | Path) -> str:
    return Path(os.path.relpath(target, Path(report).parent)).as_posix()


def report_links(cfg: dict, root: str | Path = ".") -> list[dict]:
    """In a run's report: {name, href, config, command} of each tier over the same run (the
    TIER_CONFIGS found under ``root``); in a tier's report: the run's report, name None."""
    report = run_paths(cfg)["report"]
    links = []
    for name, file in TIER_CONFIGS.items():
        path = Path(root) / file
        if not path.is_file():
            continue
        tier_cfg = load_config(path)
        if tier_cfg["run"] != cfg["run"]:
            continue
        if cfg.get("tier") is None:
            href = _relative(run_paths(tier_cfg)["report"], report)
            links.append(dict(name=name, href=href, config=file, command=f"snakemake --cores 2 {name}"))
        elif cfg["tier"] == name:
            run_report = run_paths(load_config(extended_file(path)))["report"]
            links.append(
                dict(name=None, href=_relative(run_report, report), config=None, command="snakemake all")
            )
    return links
