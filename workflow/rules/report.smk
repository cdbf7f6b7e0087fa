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


rule report:
    input:
        **stage_inputs(config, "report"),
    output:
        **outputs("report"),
    params:
        cfg=stage_params(config, "report"),
    log:
        log_path(config, "report"),
    benchmark:
        benchmark_path(config, "report")
    conda:
        ENV
    threads: 1
    shell:
        hkd_shell("report")


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
    shell:
        hkd_shell("figures")
