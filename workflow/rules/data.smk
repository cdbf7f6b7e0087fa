rule data:
    output:
        **outputs("data"),
    params:
        cfg=stage_params(config, "data"),
    log:
        log_path(config, "data"),
    benchmark:
        benchmark_path(config, "data")
    conda:
        ENV
    threads: 1
    shell:
        hkd_shell("data")
