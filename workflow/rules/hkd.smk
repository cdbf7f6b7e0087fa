# HKD training, the teacher's evaluation samples and HKD's, for the run and (conditional: true) its class-conditional
# companion (rules conditional_hkd_train, conditional_teacher_sample, conditional_sample).
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
        priority: rule_priority("hkd_train", prefix)
        threads: share_of_cores("hkd_train")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}hkd_train"),
        shell:
            hkd_shell("hkd-train", "{params.run_flag}", multi_gpu=True)

    rule:
        name:
            f"{prefix}teacher_sample"
        input:
            **stage_inputs(run_cfg, "teacher_sample"),
        output:
            **outputs("teacher_sample", run_cfg),
        params:
            cfg=stage_params(run_cfg, "teacher_sample"),
            run_flag=flag,
        log:
            log_path(run_cfg, "teacher_sample"),
        benchmark:
            benchmark_path(run_cfg, "teacher_sample")
        conda:
            ENV
        priority: rule_priority("teacher_sample", prefix)
        threads: share_of_cores("teacher_sample")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}teacher_sample"),
        shell:
            hkd_shell("teacher-sample", "{params.run_flag}")

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
        priority: rule_priority("sample", prefix)
        threads: share_of_cores("sample")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}sample"),
        shell:
            hkd_shell("sample", "{params.run_flag}")


# The other HKD trainings (Table 3 ablations and their ablation_seeds, Table 5 seeds, the
# study's recipes): one training and one evaluation job per variant, from the run's teacher
# and trajectories; {variant} is a name of pipeline.run_variants (parse_variant reads it).
# A tier's rules (claims_variant_train) train the variants the run does not.
for prefix, run_cfg, run_cfg_file, extended in RULE_SETS:
    if not tier_owns(run_cfg, extended, "variant_train"):
        continue

    rule:
        name:
            f"{prefix}variant_train"
        input:
            **stage_inputs(run_cfg, "variant_train"),
        output:
            **outputs("variant_train", run_cfg),
        wildcard_constraints:
            variant=variant_pattern(own_variants(run_cfg, extended)),
        params:
            cfg=stage_params(run_cfg, "variant_train"),
            run_config=run_cfg_file,
        log:
            log_path(run_cfg, "variant_train-{variant}"),
        benchmark:
            benchmark_path(run_cfg, "variant_train-{variant}")
        conda:
            ENV
        priority: rule_priority("variant_train", False)
        threads: share_of_cores("variant_train", run_cfg)
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}variant_train"),
        shell:
            hkd_shell("variant-train --variant {wildcards.variant}", multi_gpu=True, config_file="{params.run_config}")

    rule:
        name:
            f"{prefix}variant_evaluate"
        input:
            **stage_inputs(run_cfg, "variant_evaluate"),
        output:
            **outputs("variant_evaluate", run_cfg),
        wildcard_constraints:
            variant=variant_pattern(own_variants(run_cfg, extended)),
        params:
            cfg=stage_params(run_cfg, "variant_evaluate"),
            run_config=run_cfg_file,
        log:
            log_path(run_cfg, "variant_evaluate-{variant}"),
        benchmark:
            benchmark_path(run_cfg, "variant_evaluate-{variant}")
        conda:
            ENV
        priority: rule_priority("variant_evaluate", False)
        threads: share_of_cores("variant_evaluate", run_cfg)
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}variant_evaluate"),
        shell:
            hkd_shell("variant-evaluate --variant {wildcards.variant}", config_file="{params.run_config}")
