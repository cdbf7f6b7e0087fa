rule spectral:
    input:
        **stage_inputs(config, "spectral"),
    output:
        **outputs("spectral"),
    log:
        log_path(config, "spectral"),
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
    conda:
        ENV
    threads: 1
    shell:
        hkd_shell("report")
