rule spectral:
    input:
        **stage_inputs(config, "spectral"),
    output:
        **outputs("spectral"),
    log:
        log_path(config, "spectral"),
    benchmark:
        benchmark_path(config, "spectral")
    conda:
        ENV
    threads: 1
    shell:
        hkd_shell("spectral")


# The run's report, and each tier's in its own report_dir (claims_report: reports/claims/)
for prefix, run_cfg, run_cfg_file, extended in RULE_SETS:

    rule:
        name:
            f"{prefix}report"
        input:
            **stage_inputs(run_cfg, "report"),
        output:
            **outputs("report", run_cfg),
        params:
            cfg=stage_params(run_cfg, "report"),
            run_config=run_cfg_file,
        log:
            log_path(run_cfg, "report"),
        benchmark:
            benchmark_path(run_cfg, "report")
        conda:
            ENV
        threads: 1
        shell:
            hkd_shell("report", config_file="{params.run_config}")


# Figures 2, 4, 5, 6 and the trajectory viewer of the run's HKD
rule figures:
    input:
        **stage_inputs(config, "figures"),
    output:
        **outputs("figures"),
    params:
        cfg=stage_params(config, "figures"),
    log:
        log_path(config, "figures"),
    benchmark:
        benchmark_path(config, "figures")
    conda:
        ENV
    threads: share_of_cores("figures")
    resources:
        gpu=gpus(),
        **memory("figures"),
    shell:
        hkd_shell("figures")
