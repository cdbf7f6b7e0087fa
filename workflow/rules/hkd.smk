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
rule variant_train:
    input:
        **stage_inputs(config, "variant_train"),
    output:
        **outputs("variant_train"),
    wildcard_constraints:
        variant=VARIANTS,
    params:
        cfg=stage_params(config, "variant_train"),
    log:
        log_path(config, "variant_train-{variant}"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("variant-train --variant {wildcards.variant}")


rule variant_evaluate:
    input:
        **stage_inputs(config, "variant_evaluate"),
    output:
        **outputs("variant_evaluate"),
    wildcard_constraints:
        variant=VARIANTS,
    params:
        cfg=stage_params(config, "variant_evaluate"),
    log:
        log_path(config, "variant_evaluate-{variant}"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("variant-evaluate --variant {wildcards.variant}")
