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


# One job per shard: on a cluster each is its own (GPU) job; locally they run one after
# another, each with all cores (several GPUs on one machine: torchrun, README). A finished
# shard is kept when the run is interrupted.
rule trajectory_shard:
    input:
        **stage_inputs(config, "trajectories"),
    output:
        trajectory_shard_pattern(config),
    wildcard_constraints:
        shard=r"\d{5}",
    params:
        cfg=stage_params(config, "trajectories"),
    log:
        log_path(config, "trajectories-{shard}"),
    conda:
        ENV
    threads: workflow.cores
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    shell:
        HKD + f" trajectories --shard {{wildcards.shard}} --config {CONFIG_FILE} --threads {{threads}} 2>&1 | tee {{log}}"


rule trajectories:
    input:
        **stage_inputs(config, "trajectories"),
        shards=trajectory_shard_paths(config),
    output:
        **outputs("trajectories"),
    params:
        cfg=stage_params(config, "trajectories"),
    log:
        log_path(config, "trajectories"),
    conda:
        ENV
    threads: 1
    shell:
        hkd_shell("trajectories")
