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
