"""Table 5, training stability: FID of the HKD weights after fixed epochs, over the run's
own training and the ``stability.seeds`` trainings (same teacher and trajectories, other
initialisation and minibatch seeds), as mean and standard deviation per epoch; plus the
model before training (the teacher-initialised encoder/decoder with zero Koopman
generators, the same for every seed). The first ``GRID_SAMPLES`` samples of the run's own
training at each epoch are kept for the report's grids."""

from __future__ import annotations

import numpy as np
import torch

from hkd.data.dataset import load_dataset
from hkd.io import save_json, save_npz
from hkd.koopman.model import HKD, load_hkd
from hkd.metrics.evaluate import feature_extractor, score_one_step
from hkd.pipeline import run_paths, seed_variants, snapshot_paths


#: samples per epoch kept for the report (which shows the first report.grid_images of them)
GRID_SAMPLES = 64


def snapshot_files(cfg: dict) -> dict[str, dict[int, str]]:
    """{run name: {epoch: snapshot file}} of every Table 5 run, the run's own first."""
    p = run_paths(cfg)
    runs = {f"seed{cfg['seed']}": snapshot_paths(cfg, p["hkd_snapshots"])}
    for v in seed_variants(cfg):
        runs[v] = snapshot_paths(cfg, p["variant_snapshots"].replace("{variant}", v))
    return runs


def evaluate_stability(cfg: dict, paths: dict, teacher, device, dtype) -> dict:
    data = load_dataset(paths["data"])
    extractor, weights, info = feature_extractor(cfg, paths, data)
    hk, edm = cfg["hkd"], cfg["edm"]
    torch.manual_seed(cfg["seed"] + 1)  # as hkd-train builds it (nothing in it is random today)
    initial = HKD(teacher, eps=edm["sigma_min"], sigma_max=edm["sigma_max"], time_unit=hk["koopman_time_unit"],
                  koopman=hk["koopman"], hierarchy=hk["hierarchy"]).to(device).eval()
    k = GRID_SAMPLES
    images, _, before = score_one_step(cfg, initial, data, extractor, weights, device, dtype,
                                       "stability: before training")
    grids = {"before": images[:k]}
    runs = {}
    own = f"seed{cfg['seed']}"
    for name, files in snapshot_files(cfg).items():
        runs[name] = {}
        for epoch, path in files.items():
            model = load_hkd(path, device, cfg)
            images, _, m = score_one_step(cfg, model, data, extractor, weights, device, dtype,
                                          f"stability: {name} epoch {epoch}")
            runs[name][str(epoch)] = {**m, "steps": (model.train_stats or {}).get("steps")}
            if name == own:
                grids[f"epoch{epoch:04d}"] = images[:k]
    by_epoch = {}
    for epoch in hk["snapshot_epochs"]:
        fids = np.array([runs[r][str(epoch)]["fid"] for r in runs])
        by_epoch[str(epoch)] = {"mean": float(fids.mean()), "std": float(fids.std(ddof=1)) if len(fids) > 1 else None,
                                "runs": len(fids)}
    result = {"epochs": hk["snapshot_epochs"], "total_epochs": hk["epochs"], "before_training": before,
              "runs": runs, "fid_by_epoch": by_epoch, "std": "sample standard deviation (ddof = 1) over the runs",
              "feature_extractor": info["name"], "images": cfg["sample"]["count"]}
    save_npz(paths["stability_samples"], **grids)
    save_json(result, paths["stability"])
    return {"before": before["fid"], "fid_by_epoch": {e: v["mean"] for e, v in by_epoch.items()}}
