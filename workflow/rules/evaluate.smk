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
    priority: rule_priority("classifier")
    threads: share_of_cores("classifier")
    resources:
        **memory("classifier"),
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
        priority: rule_priority("evaluate", prefix)
        threads: share_of_cores("evaluate")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}evaluate"),
        shell:
            hkd_shell("evaluate", "{params.run_flag}")


# Table 5: FID after each hkd.snapshot_epochs of the run's HKD and the stability.seeds runs;
# every trained row as mean and spread over seeds, Table 3's ordering with verdicts, and the
# optimisation study (config section `study`) with its controls from the trained weights
# (recipe_controls). A tier's rules (claims_stability, claims_recipe_controls, claims_study)
# remake them from the run's trainings and its own.
for prefix, run_cfg, run_cfg_file, extended in RULE_SETS:
    if tier_owns(run_cfg, extended, "stability"):

        rule:
            name:
                f"{prefix}stability"
            input:
                **stage_inputs(run_cfg, "stability"),
            output:
                **outputs("stability", run_cfg),
            params:
                cfg=stage_params(run_cfg, "stability"),
                run_config=run_cfg_file,
            log:
                log_path(run_cfg, "stability"),
            benchmark:
                benchmark_path(run_cfg, "stability")
            conda:
                ENV
            priority: rule_priority("stability", False)
            threads: share_of_cores("stability", run_cfg)
            resources:
                gpu=gpus(run_cfg),
                **memory(f"{prefix}stability"),
            shell:
                hkd_shell("stability", config_file="{params.run_config}")

    if tier_owns(run_cfg, extended, "recipe_controls"):

        rule:
            name:
                f"{prefix}recipe_controls"
            input:
                **stage_inputs(run_cfg, "recipe_controls"),
            output:
                **outputs("recipe_controls", run_cfg),
            params:
                cfg=stage_params(run_cfg, "recipe_controls"),
                run_config=run_cfg_file,
            log:
                log_path(run_cfg, "recipe_controls"),
            benchmark:
                benchmark_path(run_cfg, "recipe_controls")
            conda:
                ENV
            priority: rule_priority("recipe_controls", False)
            threads: share_of_cores("recipe_controls", run_cfg)
            resources:
                gpu=gpus(run_cfg),
                **memory(f"{prefix}recipe_controls"),
            shell:
                hkd_shell("recipe-controls", config_file="{params.run_config}")

    if tier_owns(run_cfg, extended, "study"):

        rule:
            name:
                f"{prefix}study"
            input:
                **stage_inputs(run_cfg, "study"),
            output:
                **outputs("study", run_cfg),
            params:
                cfg=stage_params(run_cfg, "study"),
                run_config=run_cfg_file,
            log:
                log_path(run_cfg, "study"),
            benchmark:
                benchmark_path(run_cfg, "study")
            conda:
                ENV
            threads: 1
            shell:
                hkd_shell("study", config_file="{params.run_config}")
