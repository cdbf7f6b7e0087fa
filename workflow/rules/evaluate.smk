rule classifier:
    input:
        **stage_inputs(config, "classifier"),
    output:
        **outputs("classifier"),
    params:
        cfg=stage_params(config, "classifier"),
    log:
        log_path(config, "classifier"),
    conda:
        ENV
    threads: workflow.cores
    shell:
        hkd_shell("classifier")


rule evaluate:
    input:
        **stage_inputs(config, "evaluate"),
    output:
        **outputs("evaluate"),
    params:
        cfg=stage_params(config, "evaluate"),
    log:
        log_path(config, "evaluate"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("evaluate")


# Table 5: FID after each hkd.snapshot_epochs of the run's HKD and the stability.seeds runs
rule stability:
    input:
        **stage_inputs(config, "stability"),
    output:
        **outputs("stability"),
    params:
        cfg=stage_params(config, "stability"),
    log:
        log_path(config, "stability"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("stability")
