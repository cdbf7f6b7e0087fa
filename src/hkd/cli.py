"""``hkd <stage> --config FILE``: the command every Snakemake rule and DVC stage runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from hkd.config import ConfigError, load_config
from hkd.cost import commands as cost_commands
from hkd.failures import report_failure
from hkd.pipeline import (
    ABLATIONS,
    CONDITIONAL,
    STAGES,
    conditional_config,
    run_paths,
    run_variants,
    snapshot_paths,
    starts_from_unconditional,
    variant_config,
    variant_paths,
)


def _torch_setup(cfg: dict, threads: int | None):
    from hkd.runtime import torch_setup  # imported here: torch stays out of `hkd dvc-yaml`

    return torch_setup(cfg, threads)


def stage_data(cfg, paths, args):
    from hkd.data.dataset import build_dataset

    return build_dataset(cfg, paths["data"], paths["data_manifest"])


def stage_classifier(cfg, paths, args):
    from hkd.metrics.classifier import train_classifier

    _torch_setup(cfg, args.threads)
    return train_classifier(cfg, paths["data"], paths["classifier"])


def stage_teacher(cfg, paths, args):
    tcfg = cfg["teacher"]
    if tcfg["source"] == "edm_pickle":
        from hkd.teacher.edm_pickle import import_edm_pickle

        download_to = Path(cfg["downloads"]) / Path(tcfg["path"]).name
        return import_edm_pickle(tcfg["path"], tcfg["md5"], str(download_to), paths["teacher"], cfg)
    from hkd.teacher.train import train_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    return train_teacher(
        cfg,
        paths["data"],
        paths["teacher"],
        paths["teacher_tb"],
        device,
        dtype,
        resume_path=paths["teacher_resume"],
        init_path=paths["init_teacher"] if starts_from_unconditional(cfg) else None,
    )


@contextlib.contextmanager
def _teacher_in_process_group(cfg: dict, paths: dict, args):
    """(teacher, device, dtype) for this process, inside the torch.distributed process group
    that torchrun asks for (a single process needs none)."""
    from hkd import distributed
    from hkd.teacher.network import load_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    with distributed.process_group(device) as device:
        yield load_teacher(paths["teacher"], device, cfg), device, dtype


def stage_trajectories(cfg, paths, args):
    """All pending shards then the manifest, or (``--shard K``) shard K alone; under torchrun
    the processes split the pending shards."""
    from hkd.teacher.trajectories import generate_trajectories

    with _teacher_in_process_group(cfg, paths, args) as (teacher, device, _):  # teacher_precision
        return generate_trajectories(
            cfg,
            teacher,
            paths["teacher"],
            paths["trajectories_dir"],
            device,
            shards=None if args.shard is None else [args.shard],
        )


def _hkd_training(train_cfg: dict, cfg: dict, paths: dict, args, files: str) -> dict:
    """HKD training from the run's teacher and trajectories; ``files``: "hkd" (the run's own,
    paths hkd, hkd_tb, ...) or "variant" (variant_hkd, variant_tb, ...)."""
    from hkd.train.hkd_train import train_hkd

    with _teacher_in_process_group(cfg, paths, args) as (teacher, device, dtype):
        return train_hkd(
            train_cfg,
            teacher,
            paths["trajectories"],
            paths["hkd" if files == "hkd" else "variant_hkd"],
            paths[f"{files}_tb"],
            device,
            dtype,
            resume_path=paths[f"{files}_resume"],
            snapshot_paths=snapshot_paths(cfg, paths[f"{files}_snapshots"]),
        )


def stage_hkd_train(cfg, paths, args):
    return _hkd_training(cfg, cfg, paths, args, "hkd")


def stage_variant_train(cfg, paths, args):
    """HKD of one variant (a Table 3 ablation's ``hkd:`` keys, or a Table 5 seed), from the
    run's teacher and trajectories."""
    return _hkd_training(variant_config(cfg, args.variant), cfg, paths, args, "variant")


def stage_variant_evaluate(cfg, paths, args):
    from hkd.koopman.model import load_hkd
    from hkd.metrics.evaluate import evaluate_variant

    device, dtype = _torch_setup(cfg, args.threads)
    return evaluate_variant(
        cfg, paths, args.variant, load_hkd(paths["variant_hkd"], device, cfg), device, dtype
    )


def stage_stability(cfg, paths, args):
    from hkd.metrics.stability import evaluate_stability
    from hkd.teacher.network import load_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    return evaluate_stability(cfg, paths, load_teacher(paths["teacher"], device, cfg), device, dtype)


def stage_recipe_controls(cfg, paths, args):
    from hkd.metrics.recipe_controls import write_recipe_controls
    from hkd.runtime import teacher_dtype
    from hkd.teacher.network import load_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    teacher = load_teacher(paths["teacher"], device, cfg)
    return write_recipe_controls(cfg, paths, teacher, device, dtype, teacher_dtype(cfg, device))


def stage_study(cfg, paths, args):
    from hkd.metrics.study import write_study

    return write_study(cfg, paths)


def stage_teacher_sample(cfg, paths, args):
    from hkd.sample import write_teacher_samples
    from hkd.teacher.network import load_teacher

    device, _dtype = _torch_setup(cfg, args.threads)
    return write_teacher_samples(cfg, load_teacher(paths["teacher"], device, cfg), paths, device)


def stage_sample(cfg, paths, args):
    from hkd.koopman.model import load_hkd
    from hkd.sample import write_hkd_samples

    device, dtype = _torch_setup(cfg, args.threads)
    return write_hkd_samples(cfg, load_hkd(paths["hkd"], device, cfg), paths, device, dtype)


def stage_evaluate(cfg, paths, args):
    from hkd.koopman.model import load_hkd
    from hkd.metrics.evaluate import evaluate
    from hkd.teacher.network import load_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    kd = load_hkd(paths["kd"], device, cfg) if "no_koopman" in cfg["ablations"] else None
    res = evaluate(
        cfg,
        paths,
        load_teacher(paths["teacher"], device, cfg),
        load_hkd(paths["hkd"], device, cfg),
        device,
        dtype,
        kd=kd,
    )
    return {"rows": res["rows"], "speedup_hkd_vs_teacher": res["speedup_hkd_vs_teacher"]}


def stage_spectral(cfg, paths, args):
    from hkd.analysis.spectral import plot_spectrum
    from hkd.koopman.model import load_hkd

    return plot_spectrum(load_hkd(paths["hkd"], cfg=cfg), paths["spectral"])


def stage_figures(cfg, paths, args):
    from hkd.analysis.figures import make_figures
    from hkd.koopman.model import load_hkd
    from hkd.teacher.network import load_teacher

    device, dtype = _torch_setup(cfg, args.threads)
    return make_figures(
        cfg,
        paths,
        load_teacher(paths["teacher"], device, cfg),
        load_hkd(paths["hkd"], device, cfg),
        device,
        dtype,
    )


def run_config(args) -> dict:
    """The config of the run a command works on: ``--config``, or with ``--conditional`` its
    class-conditional companion."""
    cfg = load_config(args.config)
    if getattr(args, CONDITIONAL, False):
        if not cfg[CONDITIONAL]:
            raise ConfigError(
                f"{args.config}: key '{CONDITIONAL}' is false: this run has no class-conditional companion"
            )
        cfg = conditional_config(cfg)
    return cfg


def run_edit(args) -> int:
    """``hkd edit``: Figure 5 for chosen seeds or images, written as one PNG grid."""
    from hkd.analysis.edit_command import edit_command

    cfg = run_config(args)
    summary = edit_command(cfg, run_paths(cfg), args)
    print(json.dumps(summary, indent=1))
    return 0


def stage_report(cfg, paths, args):
    from hkd.report.build import build_report
    from hkd.report.loss_curve import write_loss_table
    from hkd.report.summary import write_summary

    write_summary(cfg, paths)
    write_loss_table(paths["hkd_tb"], paths["loss_curve"])
    build_report(cfg, paths, paths["report"])
    return {"report": paths["report"], "summary": paths["summary"]}


STAGE_FUNCTIONS = {
    "data": stage_data,
    "classifier": stage_classifier,
    "teacher": stage_teacher,
    "trajectories": stage_trajectories,
    "hkd-train": stage_hkd_train,
    "teacher-sample": stage_teacher_sample,
    "sample": stage_sample,
    "evaluate": stage_evaluate,
    "spectral": stage_spectral,
    "report": stage_report,
    "variant-train": stage_variant_train,
    "variant-evaluate": stage_variant_evaluate,
    "stability": stage_stability,
    "figures": stage_figures,
    "recipe-controls": stage_recipe_controls,
    "study": stage_study,
}
#: commands that run once per variant (``--variant``: a Table 3 ablation or a Table 5 seed)
PER_VARIANT = {s.command for s in STAGES if s.per_variant}
#: commands that also run for the class-conditional companion (``--conditional``, Table 4)
FOR_CONDITIONAL = {s.command for s in STAGES if s.conditional}
assert set(STAGE_FUNCTIONS) == {s.command for s in STAGES}


def write_dvc_yaml(config_file: str, out: str, check: bool) -> int:
    """dvc.yaml of the config (``out``) and ``<tier>/dvc.yaml`` beside it for each tier over
    it; with ``check``, only whether the files on disk are these."""
    from hkd.dvc_record import dvc_yaml_texts, stale_dvc_files

    texts = dvc_yaml_texts(config_file, out)
    if check:
        stale = stale_dvc_files(texts)
        for path in stale:
            print(f"{path} is out of date; run: hkd dvc-yaml --config {config_file}", file=sys.stderr)
        if not stale:
            print(" and ".join(map(str, texts)) + " up to date")
        return 1 if stale else 0
    from hkd.io import atomic_path

    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        print(f"wrote {path}")
    return 0


def _speed_index() -> dict | None:
    """Print this machine's newest stored speed index (``hkd bench --reference``) at the
    start of the stage's log (process 0 under torchrun), so that the stage's wall time can be
    read against the machine's speed that day; a look at stored files, never a measurement."""
    import os

    from hkd.cost.reference import index_line

    line, ref = index_line()
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)
    return ref


def _record_time(paths: dict, args, seconds: float, speed_index: dict | None) -> None:
    """The stage's wall time, the speed index it started with and how each of its network
    paths ran (compiled or eager, and why) for the report's provenance block and the stage's
    log (process 0 under torchrun)."""
    import os
    from datetime import datetime, timezone

    from hkd.io import save_json

    if os.environ.get("RANK", "0") != "0":
        return
    name = args.stage
    if getattr(args, "variant", None):
        name += f"-{args.variant}"
    if getattr(args, "shard", None) is not None:
        name += f"-shard{args.shard:05d}"
    guard = sys.modules.get("hkd.compile_guard")  # imported by the stages that build networks
    compiled = guard.decisions() if guard is not None else {}
    save_json(
        {
            "stage": name,
            "seconds": round(seconds, 1),
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
            "compiled": compiled,
            "speed_index": speed_index,
        },
        Path(paths["timings"]) / f"{name}.json",
    )
    for what in compiled:
        print(f"hkd {args.stage}: {guard.describe(what)}")


def _add_stage_parsers(sub) -> None:
    for name in STAGE_FUNCTIONS:
        p = sub.add_parser(name, help=f"run the {name} stage")
        p.add_argument("--config", required=True, help="run configuration (YAML)")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        p.add_argument(
            "--log",
            default=None,
            help="the stage's log file (Snakemake's rules pass theirs): a failure's traceback is "
            "appended there and the terminal gets one line; without it the traceback of an "
            "unexpected error goes to stderr",
        )
        if name == "trajectories":
            p.add_argument(
                "--shard",
                type=int,
                default=None,
                help="generate this shard only (no manifest); Snakemake runs one job per shard",
            )
        if name in FOR_CONDITIONAL:
            p.add_argument(
                f"--{CONDITIONAL}",
                action="store_true",
                help="run the stage for the class-conditional companion run (config key conditional)",
            )
        if name in PER_VARIANT:
            p.add_argument(
                "--variant",
                required=True,
                help=f"a Table 3 ablation ({', '.join(ABLATIONS)}) with an optional -seed<N>, a Table 5 "
                "run seed<N>, or a study run study-<recipe>-<model>-seed<N> (docs/training.md, docs/study.md)",
            )


def _add_edit_parser(sub) -> None:
    p = sub.add_parser("edit", help="frequency-aware one-step editing (Figure 5) of two seeds or two images")
    p.add_argument("--config", required=True, help="run configuration (YAML); edits that run's HKD")
    p.add_argument(
        f"--{CONDITIONAL}", action="store_true", help="edit with the class-conditional companion's HKD"
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--seeds",
        type=int,
        nargs=2,
        metavar=("GENERATED", "REFERENCE"),
        help="noise seeds (absolute) of the generated and the reference image",
    )
    src.add_argument(
        "--images",
        nargs=2,
        metavar=("GENERATED", "REFERENCE"),
        help="two image files (PNG/JPEG) of the run's resolution and channels",
    )
    p.add_argument(
        "--band",
        type=int,
        default=None,
        help="band index of analysis.band_edges (default: analysis.edit.band)",
    )
    p.add_argument(
        "--mask",
        default=None,
        help="region: lower_left, lower_half, upper_half, left_half, centre, all, "
        "or a mask image (white = mixed); default analysis.edit.mask",
    )
    p.add_argument("--ratios", type=float, nargs="+", default=None, help="mixing ratios in [0, 1]")
    p.add_argument(
        "--label", type=int, default=None, help="class label for a conditional HKD (default: from the seed)"
    )
    p.add_argument(
        "--noise-seed", type=int, default=0, help="seed of the noise that brings --images to the midpoint"
    )
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--threads", type=int, default=None)


def _add_export_parser(sub) -> None:
    p = sub.add_parser(
        "export-teacher",
        help="write a run's trained teacher as an EDM network pickle (how resources/ teachers are made)",
    )
    p.add_argument("--config", required=True, help="run configuration (YAML) whose teacher to export")
    p.add_argument(f"--{CONDITIONAL}", action="store_true", help="export the class-conditional companion's")
    p.add_argument("--out", required=True, help="the .pkl file to write")


def run_export(args) -> int:
    """``hkd export-teacher``: the teacher of ``--config`` as an EDM pickle, checked by reading it
    back through the ``edm_pickle`` loader."""
    from hkd.teacher.edm_export import export_teacher

    cfg = run_config(args)
    dataset = {"source": cfg["data"]["source"], "resolution": cfg["data"]["resolution"], "run": cfg["run"]}
    print(json.dumps(export_teacher(run_paths(cfg)["teacher"], args.out, dataset), indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hkd", description=__doc__)
    sub = parser.add_subparsers(dest="stage", required=True)
    _add_stage_parsers(sub)
    _add_edit_parser(sub)
    _add_export_parser(sub)
    cost_commands.add_parsers(sub)
    p = sub.add_parser("dvc-yaml", help="write (or --check) dvc.yaml from the pipeline definition")
    p.add_argument("--config", default="configs/default.yaml")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true")
    p = sub.add_parser(
        "dvc-commit", help="record in DVC (dvc commit) the outputs of a finished `snakemake all` or tier"
    )
    p.add_argument("--config", default="configs/default.yaml", help="the config file Snakemake ran")
    p.add_argument("--tier", default=None, help="a tier over it (claims) instead of `all`")
    return parser


def run_dvc_commit(args) -> int:
    """``hkd dvc-commit``: what Snakemake's onsuccess handler does after `all` or a tier."""
    from hkd.dvc_record import check_tier_name, record_run, run_config_of

    check_tier_name(args.tier)
    return record_run(args.config, run_config_of(args.config, args.tier), args.tier)


def run_stage(args) -> int:
    """One pipeline stage: its config and paths, the stage function, its wall time."""
    cfg = run_config(args)
    paths = run_paths(cfg)
    if args.stage in PER_VARIANT:
        if args.variant not in run_variants(cfg):
            raise ConfigError(
                f"{args.config}: none of the keys 'ablations', 'ablation_seeds', 'stability.seeds' "
                f"and 'study' makes a variant {args.variant!r}"
            )
        paths = variant_paths(cfg, args.variant)
    speed_index = _speed_index()
    t0 = time.time()
    summary = STAGE_FUNCTIONS[args.stage](cfg, paths, args)
    seconds = time.time() - t0
    print(f"hkd {args.stage}: done in {seconds:.1f} s")
    _record_time(paths, args, seconds, speed_index)
    if summary:
        print(json.dumps(summary, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.stage == "dvc-yaml":
            return write_dvc_yaml(args.config, args.out, args.check)
        if args.stage == "dvc-commit":
            return run_dvc_commit(args)
        if args.stage == "edit":
            return run_edit(args)
        if args.stage == "export-teacher":
            return run_export(args)
        if args.stage in cost_commands.COMMANDS:
            return cost_commands.run(args)
        return run_stage(args)
    except Exception as exc:
        return report_failure(args.stage, exc, getattr(args, "log", None))


if __name__ == "__main__":
    sys.exit(main())
