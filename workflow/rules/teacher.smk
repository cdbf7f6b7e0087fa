# The teacher and its trajectories, for the run and (conditional: true) for its
# class-conditional companion, whose rules are named conditional_<rule>.
for prefix, run_cfg, flag in RUNS:

    rule:
        name:
            f"{prefix}teacher"
        input:
            **stage_inputs(run_cfg, "teacher"),
        output:
            **outputs("teacher", run_cfg),
        params:
            cfg=stage_params(run_cfg, "teacher"),
            run_flag=flag,
        log:
            log_path(run_cfg, "teacher"),
        benchmark:
            benchmark_path(run_cfg, "teacher")
        conda:
            ENV
        threads: share_of_cores("teacher")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}teacher"),
        shell:
            hkd_shell("teacher", "{params.run_flag}")

    # One job per shard: on a cluster each is its own (GPU) job; locally they share the cores
    # (several GPUs on one machine: torchrun, docs/paper-configs.md). A finished shard is kept when the run
    # is interrupted.
    rule:
        name:
            f"{prefix}trajectory_shard"
        input:
            **stage_inputs(run_cfg, "trajectories"),
        output:
            trajectory_shard_pattern(run_cfg),
        wildcard_constraints:
            shard=r"\d{5}",
        params:
            cfg=stage_params(run_cfg, "trajectories"),
            run_flag=flag,
        log:
            log_path(run_cfg, "trajectories-{shard}"),
        benchmark:
            benchmark_path(run_cfg, "trajectories-{shard}")
        conda:
            ENV
        priority: rule_priority("trajectories", prefix)
        threads: share_of_cores("trajectories")
        resources:
            gpu=gpus(run_cfg),
            **memory(f"{prefix}trajectory_shard"),
        shell:
            hkd_shell("trajectories --shard {wildcards.shard}", "{params.run_flag}", multi_gpu=True)

    rule:
        name:
            f"{prefix}trajectories"
        input:
            **stage_inputs(run_cfg, "trajectories"),
            shards=trajectory_shard_paths(run_cfg),
        output:
            **outputs("trajectories", run_cfg),
        params:
            cfg=stage_params(run_cfg, "trajectories"),
            run_flag=flag,
        log:
            log_path(run_cfg, "trajectories"),
        benchmark:
            benchmark_path(run_cfg, "trajectories")
        conda:
            ENV
        priority: rule_priority("trajectories", prefix)
        threads: 1
        shell:
            hkd_shell("trajectories", "{params.run_flag}")
