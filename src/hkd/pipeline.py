"""The pipeline's single source of truth: stages, the files they read and write, and
the config sections they depend on.

Snakemake rules (``workflow/rules/*.smk``), the ``hkd`` stage commands and the
generated ``dvc.yaml`` all take their paths from here. Kept free of torch so that
Snakemake starts quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def run_paths(cfg: dict) -> dict[str, str]:
    """Every file of a run, by name."""
    root = Path("results") / cfg["run"]
    report = Path(cfg["report_dir"])
    p = {
        "data": root / "data" / "digits.npz",
        "data_manifest": root / "data" / "manifest.json",
        "classifier": root / "classifier" / "classifier.pt",
        "teacher": root / "teacher" / "teacher.pt",
        "teacher_tb": root / "teacher" / "tensorboard",
        "trajectories": root / "trajectories" / "trajectories.npz",
        "hkd": root / "hkd" / "hkd.pt",
        "hkd_tb": root / "hkd" / "tensorboard",
        "samples_teacher": root / "samples" / "teacher.npz",
        "samples_hkd": root / "samples" / "hkd.npz",
        "metrics": root / "eval" / "metrics.json",
        "spectral": root / "analysis" / "spectral.png",
        "report": report / "index.html",
    }
    return {k: str(v) for k, v in p.items()}


def log_path(cfg: dict, stage: str) -> str:
    return str(Path("results") / cfg["run"] / "logs" / f"{stage}.log")


#: outputs that are folders (Snakemake ``directory()``; DVC ``cache: false``)
DIRECTORY_OUTPUTS = frozenset({"teacher_tb", "hkd_tb"})


@dataclass(frozen=True)
class Stage:
    name: str                  # Snakemake rule / DVC stage name
    command: str               # ``hkd <command>``
    inputs: tuple[str, ...]    # names from run_paths
    outputs: tuple[str, ...]
    params: tuple[str, ...]    # top-level config sections the stage reads
    code: tuple[str, ...]      # source folders/files whose change reruns it under DVC


#: modules every torch stage runs through (device, precision, atomic file writes)
_RUNTIME = ("src/hkd/runtime.py", "src/hkd/io.py")
#: how the teacher checkpoint is built from the config and read back (teacher_kwargs, load_teacher)
_TEACHER_CKPT = ("src/hkd/teacher/network.py",)

STAGES: tuple[Stage, ...] = (
    Stage("data", "data", (), ("data", "data_manifest"), ("seed", "data"),
          ("src/hkd/data/mnist.py", "src/hkd/io.py")),
    Stage("classifier", "classifier", ("data",), ("classifier",), ("seed", "evaluate"),
          ("src/hkd/metrics/classifier.py",) + _RUNTIME),
    Stage("teacher", "teacher", ("data",), ("teacher", "teacher_tb"),
          ("seed", "device", "precision", "compile", "network", "edm", "teacher"),
          ("src/hkd/nn", "src/hkd/teacher/train.py", "src/hkd/ema.py") + _TEACHER_CKPT + _RUNTIME),
    Stage("trajectories", "trajectories", ("teacher",), ("trajectories",),
          ("device", "precision", "compile", "edm", "trajectories"),
          ("src/hkd/nn", "src/hkd/teacher/sampler.py", "src/hkd/teacher/trajectories.py")
          + _TEACHER_CKPT + _RUNTIME),
    Stage("hkd_train", "hkd-train", ("teacher", "trajectories"), ("hkd", "hkd_tb"),
          ("seed", "device", "precision", "compile", "edm", "hkd"),
          ("src/hkd/nn", "src/hkd/koopman", "src/hkd/train", "src/hkd/ema.py") + _TEACHER_CKPT + _RUNTIME),
    Stage("sample", "sample", ("teacher", "hkd"), ("samples_teacher", "samples_hkd"),
          ("device", "precision", "compile", "edm", "trajectories", "sample"),
          ("src/hkd/nn", "src/hkd/sample.py", "src/hkd/teacher/sampler.py", "src/hkd/teacher/trajectories.py",
           "src/hkd/koopman") + _TEACHER_CKPT + _RUNTIME),
    Stage("evaluate", "evaluate",
          ("data", "classifier", "teacher", "hkd", "samples_teacher", "samples_hkd"),
          ("metrics",), ("device", "precision", "trajectories", "evaluate"),
          ("src/hkd/metrics",) + _TEACHER_CKPT + _RUNTIME),
    Stage("spectral", "spectral", ("hkd",), ("spectral",), (), ("src/hkd/analysis",)),
    Stage("report", "report",
          ("data", "data_manifest", "classifier", "samples_teacher", "samples_hkd", "metrics",
           "spectral"),
          ("report",), ("run", "report_dir", "trajectories", "hkd", "report"), ("src/hkd/report",)),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_inputs(cfg: dict, name: str) -> dict[str, str]:
    paths = run_paths(cfg)
    return {k: paths[k] for k in STAGE_BY_NAME[name].inputs}


def stage_outputs(cfg: dict, name: str) -> dict[str, str]:
    paths = run_paths(cfg)
    return {k: paths[k] for k in STAGE_BY_NAME[name].outputs}


def stage_params(cfg: dict, name: str) -> dict:
    return {k: cfg[k] for k in STAGE_BY_NAME[name].params}


def dvc_stages(cfg: dict, config_file: str) -> dict:
    """The ``stages:`` mapping of dvc.yaml for one config file."""
    stages = {}
    for st in STAGES:
        outs = []
        for k, path in stage_outputs(cfg, st.name).items():
            outs.append({path: {"cache": False}} if k in DIRECTORY_OUTPUTS else path)
        entry = {
            "cmd": f"hkd {st.command} --config {config_file}",
            "deps": list(stage_inputs(cfg, st.name).values()) + list(st.code),
        }
        if st.params:
            entry["params"] = [{config_file: list(st.params)}]
        entry["outs"] = outs
        stages[st.name] = entry
    return {"stages": stages}
