# Shared helpers: config validation and the command prefix. Paths come from
# src/hkd/pipeline.py, the single definition of stages, inputs and outputs.
import os
import re
import sys
from pathlib import Path

SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)

from hkd.pipeline import (  # noqa: E402
    DEFAULT_CONFIG, DIRECTORY_OUTPUTS, TIER_CONFIGS, FIGURES, benchmark_path, check_tier, dag_runs, is_companion, log_path,
    own_variants, rule_priority, rule_threads, run_paths, stage_inputs, stage_outputs, stage_params, tier_files, tier_owns,
    trajectory_shard_paths, trajectory_shard_pattern)

from hkd.config import load_run_config, write_run_config  # noqa: E402
from snakemake.exceptions import WorkflowError  # noqa: E402

# Snakemake's own merge (--configfile files over configs/default.yaml, then --config) knows
# neither `extends:` nor the schema's cross-key rules: the run's config is built here instead,
# validated, and written to results/<run>/config.yaml, the one file every job reads (rewritten
# only when it changes, so an override reruns just the jobs whose params it changes).
SCHEMA = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
CONFIG_FILES = [str(f) for f in workflow.overwrite_configfiles] or [os.path.join(workflow.basedir, DEFAULT_CONFIG)]
_RUN_CONFIG = load_run_config(CONFIG_FILES, workflow.config_settings.config)
validate(_RUN_CONFIG, SCHEMA)
config.clear()
config.update(_RUN_CONFIG)
CONFIG_FILE = run_paths(config)["run_config"]
write_run_config(config, CONFIG_FILE)


def _tier(name, tier_file):
    """A tier over the run's config (configs/claims.yaml over the default): its config, with
    the same --config overrides, written to results/<run>/<tier>/config.yaml for its jobs."""
    tier_cfg = load_run_config([tier_file], workflow.config_settings.config)
    validate(tier_cfg, SCHEMA)
    check_tier(tier_cfg, config, str(tier_file))
    tier_cfg_file = run_paths(tier_cfg)["run_config"]
    write_run_config(tier_cfg, tier_cfg_file)
    return (f"{name}_", tier_cfg, tier_cfg_file, config)


# (rule-name prefix, config, file its jobs read, config it extends or None) of the run and of
# each tier over its config file: rules <tier>_variant_train, _variant_evaluate, _stability,
# _study, _report, targets `snakemake <tier>` (Snakefile).
TIERS = [_tier(n, f) for n, f in tier_files(CONFIG_FILES[0], workflow.basedir).items()] if len(CONFIG_FILES) == 1 else []
RULE_SETS = [("", config, CONFIG_FILE, None)] + TIERS

# Each rule's memory request (mem_mb; gpu_mem_mb on a CUDA run): its jobs' planned peak from
# the config's stored `hkd bench` numbers, times a margin (hkd.cost.resources). Rules with no
# planned peak, and configs with no benchmark, keep the profile's default-resources.
from hkd.cost.resources import rule_memory  # noqa: E402

BENCHMARKS = os.path.join(workflow.basedir, "benchmarks")
PLANNED_MEMORY = rule_memory(config, BENCHMARKS)
for _prefix, _tier_cfg, _file, _extended in TIERS:
    PLANNED_MEMORY.update(rule_memory(_tier_cfg, BENCHMARKS, extended=_extended))


def memory(rule_name):
    """The planned memory resources of a rule ({} where the plan has none)."""
    return PLANNED_MEMORY.get(rule_name, {})

# Stages run `python -m hkd <stage>` from this checkout: the interpreter running
# Snakemake (e.g. the project's .venv), or the rule's conda env with --use-conda.
from snakemake.settings.types import DeploymentMethod  # noqa: E402

_PY = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
HKD = f"env PYTHONPATH={SRC} {_PY} -m hkd"
ENV = "../envs/hkd.yaml"
# (rule-name prefix, config, stage flag) of the run and, with `conditional: true`, its
# class-conditional companion (Table 4): the rules of the stages both have are defined per run.
# Snakemake evaluates a shell: expression when the job runs, after the loop has ended, so
# those rules pass the flag through params, fixed at definition time ({params.run_flag}).
RUNS = dag_runs(config)


# outputs `snakemake --report` shows: {run_paths key: (caption in workflow/report/, category)}
REPORTED = {"report": ("report.rst", "Report"), "tables": ("tables.rst", "Tables"),
            "budget_curves": ("budget_curves.rst", "Tables"), "spectral": ("spectral.rst", "Figures"),
            **{k: ("figures.rst", "Figures") for k in FIGURES if k not in ("figures", "viewer")}}


def _reported(key, path):
    """``path`` marked for Snakemake's report when ``key`` is one of REPORTED."""
    if key not in REPORTED:
        return path
    caption, category = REPORTED[key]
    caption = os.path.join(workflow.basedir, "workflow", "report", caption)
    if key in DIRECTORY_OUTPUTS:
        return report(path, caption=caption, category=category, patterns=["{name}.html"])
    return report(path, caption=caption, category=category)


def outputs(stage, cfg=None):
    """Named outputs of a stage (per-variant stages: with the {variant} wildcard), folders
    wrapped in directory(), the run's figures, tables and report marked for `--report`."""
    cfg = cfg or config
    out = {k: directory(v) if k in DIRECTORY_OUTPUTS else v for k, v in stage_outputs(cfg, stage).items()}
    return out if is_companion(cfg) else {k: _reported(k, v) for k, v in out.items()}


def share_of_cores(stage, cfg=None):
    """A job's threads: for the heavy stages the cores shared among the jobs of their kind
    that the DAG of ``cfg`` (the run's or a tier's) can run at once (pipeline.rule_threads);
    `--set-threads RULE=N` overrides it as usual."""
    return rule_threads(cfg or config, stage, workflow.cores)


def gpus(cfg=None):
    """GPUs a job of this run asks for: one on a CUDA run (the SLURM profile may raise it for
    the training and trajectory rules), none on CPU."""
    return 1 if (cfg or config)["device"] == "cuda" else 0


def hkd_shell(command, flag="", multi_gpu=False, config_file=CONFIG_FILE):
    """The thin body of every rule, which runs one stage and tees its output into the log.
    The stage gets the log too (--log): a failure's traceback goes there only, appended as
    `tee -a` appends (Snakemake deletes a job's log before it runs), and the terminal gets a
    one-line error. ``multi_gpu``: a job given several GPUs (resource gpu > 1, e.g. from the
    cluster profile) starts one process per GPU with torchrun (training and trajectory stages).
    Rules defined in a loop pass ``flag`` and ``config_file`` as ``{params.*}``."""
    args = f" {command} --config {config_file}{flag} --threads {{threads}} --log {{log}}"
    if not multi_gpu:
        return f"{HKD}{args} 2>&1 | tee -a {{log}}"
    torchrun = f"env PYTHONPATH={SRC} {_PY} -m torch.distributed.run --standalone --nproc-per-node {{resources.gpu}} -m hkd"
    return (f"if [ {{resources.gpu}} -gt 1 ]; then {torchrun}{args}; else {HKD}{args}; fi 2>&1 | tee -a {{log}}")


def variant_pattern(variants):
    """The {variant} wildcard's constraint: exactly these names."""
    return "|".join(re.escape(v) for v in variants) or "(?!)"


def tier_report(name):
    """Input of the target `snakemake <name>`: the report of the tier of that name over the
    run's config."""

    def report_of(wildcards):
        for prefix, tier_cfg, _file, _run in TIERS:
            if prefix == f"{name}_":
                return stage_outputs(tier_cfg, "report")["report"]
        raise WorkflowError(
            f"the {name} target is the tier {TIER_CONFIGS[name]} over the config it extends; "
            f"{' + '.join(CONFIG_FILES)} has no such tier: run `snakemake all --configfile <config>` "
            "instead (docs/configs.md, \"Tiers\")"
        )

    return report_of


def record_in_dvc():
    """After a successful `snakemake all` or `snakemake <tier>`: its outputs recorded in DVC
    (`dvc commit`, hkd.dvc_record), where this folder is a DVC repository whose dvc.yaml is
    the one of the config run; otherwise one line says why not. `--no-hooks` skips it."""
    from hkd.dvc_record import record_run

    targets = set(workflow.dag_settings.targets) or {"all"}
    tiers = [None if t == "all" else t for t in sorted(targets) if t == "all" or t in TIER_CONFIGS]
    if len(tiers) != len(targets) or len(CONFIG_FILES) != 1:
        what = "several --configfile files" if len(CONFIG_FILES) != 1 else "targets other than all or a tier"
        print(f"hkd dvc-commit: not recorded in DVC: the run had {what}", file=sys.stderr)
        return
    config_file = os.path.relpath(CONFIG_FILES[0])
    for tier in tiers:
        try:
            record_run(config_file, run_config_file(tier), tier)
        except Exception as exc:  # the run itself succeeded: say why it is not recorded, no more
            print(f"hkd dvc-commit: not recorded in DVC: {type(exc).__name__}: {exc}", file=sys.stderr)


def run_config_file(tier):
    """results/<run>/config.yaml of the run, or of the tier of that name."""
    for prefix, _cfg, cfg_file, _run in RULE_SETS:
        if prefix == (f"{tier}_" if tier else ""):
            return cfg_file
    raise WorkflowError(f"no tier {tier!r} over {' + '.join(CONFIG_FILES)}")
