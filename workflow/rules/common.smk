# Shared helpers: config validation and the command prefix. Paths come from
# src/hkd/pipeline.py, the single definition of stages, inputs and outputs.
import os
import sys

SRC = os.path.join(workflow.basedir, "src")
sys.path.insert(0, SRC)

from hkd.config import load_config  # noqa: E402
from hkd.pipeline import (  # noqa: E402
    DIRECTORY_OUTPUTS, dag_runs, log_path, rule_threads, run_variants, stage_inputs, stage_outputs, stage_params,
    trajectory_shard_paths, trajectory_shard_pattern)

validate(config, os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml"))

if len(workflow.overwrite_configfiles) > 1 or workflow.config_settings.config:
    raise WorkflowError(
        "pass exactly one --configfile and no --config overrides: every stage reads its "
        "settings from that one file, so write overrides into a config file of their own")
CONFIG_FILE = str(workflow.overwrite_configfiles[-1] if workflow.overwrite_configfiles
                  else os.path.join(workflow.basedir, "configs/default.yaml"))
# The stages read this file alone, so the rules see exactly it too: Snakemake has merged it
# over configs/default.yaml, which would leave keys of the default in other runs' params.
_RUN_CONFIG = load_config(CONFIG_FILE)
config.clear()
config.update(_RUN_CONFIG)

# Stages run `python -m hkd <stage>` from this checkout: the interpreter running
# Snakemake (e.g. the project's .venv), or the rule's conda env with --use-conda.
from snakemake.settings.types import DeploymentMethod  # noqa: E402

_PY = "python" if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method else sys.executable
HKD = f"env PYTHONPATH={SRC} {_PY} -m hkd"
ENV = "../envs/hkd.yaml"
# the other HKD trainings of this run: Table 3 ablations, Table 5 seeds (a regex for {variant})
VARIANTS = "|".join(run_variants(config)) or "(?!)"
# (rule-name prefix, config, stage flag) of the run and, with `conditional: true`, its
# class-conditional companion (Table 4): the rules of the stages both have are defined per run.
# Snakemake evaluates a shell: expression when the job runs, after the loop has ended, so
# those rules pass the flag through params, fixed at definition time ({params.run_flag}).
RUNS = dag_runs(config)


def outputs(stage, cfg=None):
    """Named outputs of a stage (per-variant stages: with the {variant} wildcard), folders
    wrapped in directory()."""
    return {k: directory(v) if k in DIRECTORY_OUTPUTS else v
            for k, v in stage_outputs(cfg or config, stage).items()}


def share_of_cores(stage):
    """A job's threads: for the heavy stages the cores shared among the jobs of their kind
    that the DAG can run at once (pipeline.rule_threads); `--set-threads RULE=N` overrides
    it as usual."""
    return rule_threads(config, stage, workflow.cores)


def gpus(cfg=None):
    """GPUs a job of this run asks for: one on a CUDA run (the SLURM profile may raise it for
    the training and trajectory rules), none on CPU."""
    return 1 if (cfg or config)["device"] == "cuda" else 0


def hkd_shell(command, flag="", multi_gpu=False):
    """The thin body of every rule, which runs one stage and tees its output into the log.
    ``multi_gpu``: a job given several GPUs (resource gpu > 1, e.g. from the cluster
    profile) starts one process per GPU with torchrun (training and trajectory stages)."""
    args = f" {command} --config {CONFIG_FILE}{flag} --threads {{threads}}"
    if not multi_gpu:
        return HKD + args + " 2>&1 | tee {log}"
    torchrun = f"env PYTHONPATH={SRC} {_PY} -m torch.distributed.run --standalone --nproc-per-node {{resources.gpu}} -m hkd"
    return (f"if [ {{resources.gpu}} -gt 1 ]; then {torchrun}{args}; else {HKD}{args}; fi 2>&1 | tee {{log}}")
