rule hkd_train:
    input:
        **stage_inputs(config, "hkd_train"),
    output:
        **outputs("hkd_train"),
    params:
        cfg=stage_params(config, "hkd_train"),
    log:
        log_path(config, "hkd_train"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("hkd-train")


rule sample:
    input:
        **stage_inputs(config, "sample"),
    output:
        **outputs("sample"),
    params:
        cfg=stage_params(config, "sample"),
    log:
        log_path(config, "sample"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("sample")


# Table 3 ablations (config key `ablations`): one training and one evaluation job per
# variant, from the run's teacher and trajectories; {variant} is a key of pipeline.ABLATIONS.
rule ablation_train:
    input:
        **stage_inputs(config, "ablation_train"),
    output:
        **outputs("ablation_train"),
    wildcard_constraints:
        variant=VARIANTS,
    params:
        cfg=stage_params(config, "ablation_train"),
    log:
        log_path(config, "ablation_train-{variant}"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("ablation-train --variant {wildcards.variant}")


rule ablation_evaluate:
    input:
        **stage_inputs(config, "ablation_evaluate"),
    output:
        **outputs("ablation_evaluate"),
    wildcard_constraints:
        variant=VARIANTS,
    params:
        cfg=stage_params(config, "ablation_evaluate"),
    log:
        log_path(config, "ablation_evaluate-{variant}"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("ablation-evaluate --variant {wildcards.variant}")
