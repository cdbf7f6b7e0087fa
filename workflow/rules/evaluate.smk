rule classifier:
    input:
        **stage_inputs(config, "classifier"),
    output:
        **outputs("classifier"),
    params:
        cfg=stage_params(config, "classifier"),
    log:
        log_path(config, "classifier"),
    benchmark:
        benchmark_path(config, "classifier")
    conda:
        ENV
    threads: share_of_cores("classifier")
    shell:
        hkd_shell("classifier")


# FID / IS / KID and time per image of the run and (conditional: true) of its
# class-conditional companion (rule conditional_evaluate).
for prefix, run_cfg, flag in RUNS:

    rule:
        name:
            f"{prefix}evaluate"
        input:
            **stage_inputs(run_cfg, "evaluate"),
        output:
            **outputs("evaluate", run_cfg),
        params:
            cfg=stage_params(run_cfg, "evaluate"),
            run_flag=flag,
        log:
            log_path(run_cfg, "evaluate"),
        benchmark:
            benchmark_path(run_cfg, "evaluate")
        conda:
            ENV
        threads: share_of_cores("evaluate")
        resources:
            gpu=gpus(run_cfg),
        shell:
            hkd_shell("evaluate", "{params.run_flag}")


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
    benchmark:
        benchmark_path(config, "stability")
    conda:
        ENV
    threads: share_of_cores("stability")
    resources:
        gpu=gpus(),
    shell:
        hkd_shell("stability")


# Every trained row as mean and spread over seeds, Table 3's ordering with verdicts, and the
# optimisation study (config section `study`); `snakemake --cores 2 study` trains and scores
# just what it needs.
if stage_outputs(config, "study"):

    rule study:
        input:
            **stage_inputs(config, "study"),
        output:
            **outputs("study"),
        params:
            cfg=stage_params(config, "study"),
        log:
            log_path(config, "study"),
        benchmark:
            benchmark_path(config, "study")
        conda:
            ENV
        threads: 1
        shell:
            hkd_shell("study")
