rule teacher:
    input:
        **stage_inputs(config, "teacher"),
    output:
        **outputs("teacher"),
    params:
        cfg=stage_params(config, "teacher"),
    log:
        log_path(config, "teacher"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("teacher")


rule trajectories:
    input:
        **stage_inputs(config, "trajectories"),
    output:
        **outputs("trajectories"),
    params:
        cfg=stage_params(config, "trajectories"),
    log:
        log_path(config, "trajectories"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        hkd_shell("trajectories")
