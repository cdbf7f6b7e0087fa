# HKD training and sampling, for the run and (conditional: true) its class-conditional
# companion (rules conditional_hkd_train, conditional_sample).
for prefix, run_cfg, flag in RUNS:

    rule:
        name:
            f"{prefix}hkd_train"
        input:
            **stage_inputs(run_cfg, "hkd_train"),
        output:
            **outputs("hkd_train", run_cfg),
        params:
            cfg=stage_params(run_cfg, "hkd_train"),
            run_flag=flag,
        log:
            log_path(run_cfg, "hkd_train"),
        benchmark:
            benchmark_path(run_cfg, "hkd_train")
        conda:
            ENV
        threads: share_of_cores("hkd_train")
        resources:
            gpu=gpus(run_cfg),
        shell:
            hkd_shell("hkd-train", "{params.run_flag}", multi_gpu=True)

    rule:
        name:
            f"{prefix}sample"
        input:
            **stage_inputs(run_cfg, "sample"),
        output:
            **outputs("sample", run_cfg),
        params:
            cfg=stage_params(run_cfg, "sample"),
            run_flag=flag,
        log:
            log_path(run_cfg, "sample"),
        benchmark:
            benchmark_path(run_cfg, "sample")
        conda:
            ENV
        threads: share_of_cores("sample")
        resources:
            gpu=gpus(run_cfg),
        shell:
            hkd_shell("sample", "{params.run_flag}")


# The other HKD trainings (Table 3 ablations and their ablation_seeds, Table 5 seeds, the
# study's recipes): one training and one evaluation job per variant, from the run's teacher
# and trajectories; {variant} is a name of pipeline.run_variants (parse_variant reads it).
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
    benchmark:
        benchmark_path(config, "variant_train-{variant}")
    conda:
        ENV
    threads: share_of_cores("variant_train")
    resources:
        gpu=gpus(),
    shell:
        hkd_shell("variant-train --variant {wildcards.variant}", multi_gpu=True)


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
    benchmark:
        benchmark_path(config, "variant_evaluate-{variant}")
    conda:
        ENV
    threads: share_of_cores("variant_evaluate")
    resources:
        gpu=gpus(),
    shell:
        hkd_shell("variant-evaluate --variant {wildcards.variant}")
