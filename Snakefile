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


# The claims tier (configs/claims.yaml): every training the claims need with >= 3 seeds, and the
# study; same run folder as `all`, so its teacher, trajectories and classifier are reused.
rule claims:
    input:
        claims_report,
