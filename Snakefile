# HKD reproduction pipeline. Default target: the report of the run configured in
# configs/default.yaml; select another run with --configfile configs/<name>.yaml.
from snakemake.utils import min_version, validate

min_version("9.0")

configfile: "configs/default.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/hkd.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        stage_outputs(config, "report")["report"],


# The claims tier (configs/claims.yaml, over configs/default.yaml): every training the claims
# need with >= 3 seeds, and the study; same run folder as `all`, so its teacher, trajectories,
# classifier and trainings are reused; its report goes to reports/claims/.
rule claims:
    input:
        tier_report("claims"),


# A finished `all` or tier is recorded in DVC (`dvc commit`) where dvc.yaml is this config's,
# so that `dvc status` agrees and `dvc repro` computes nothing again (docs/dvc-and-snakemake.md).
onsuccess:
    record_in_dvc()
