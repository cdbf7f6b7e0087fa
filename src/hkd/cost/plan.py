"""The cost of a config before it runs: for every job of its DAG, the files it writes and
their size, its peak memory and its time, on CPU and on a GPU.

Sizes are computed from the config (array shapes, parameter counts); memory and time from
the throughputs ``hkd bench`` stored under ``benchmarks/`` for a config with the same cost
settings (``stored.cost_digest``) and device kind. A rate measured at one batch is used as
it is: the plan assumes the config's own batch sizes, which the benchmark measures.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch

from hkd import pipeline
from hkd.cost.reference import brief
from hkd.cost.stored import cost_digest, find_benchmark, find_thread_scaling
from hkd.pipeline import rule_threads

#: time of starting a stage process (python, torch, the config), added to every job
STARTUP_SECONDS = 6.0
#: core counts whose wall time the plan computes from the DAG
ELAPSED_CORES = (2, 8, 16)
#: files below this size are listed but not estimated (logs, JSON, figures)
SMALL = 64 * 1024


@dataclass
class Job:
    name: str  # the Snakemake rule and its variant / shard
    stage: str
    files: dict = field(default_factory=dict)  # path -> estimated bytes (None: small)
    work: dict = field(default_factory=dict)  # workload -> units of its rate
    compiles: list = field(default_factory=list)  # workloads whose first call this job pays
    held_bytes: int = 0  # arrays the stage keeps in memory beside the workload's own
    inputs: set = field(default_factory=set)  # files it reads (its place in the DAG)


def _image_values(cfg: dict) -> int:
    from hkd.config import SOURCE_CHANNELS

    return SOURCE_CHANNELS[cfg["data"]["source"]] * cfg["data"]["resolution"] ** 2


#: bytes torch.save adds per tensor (zip record, name, alignment), measured on the teacher
TENSOR_OVERHEAD = 320


def _state_bytes(module: torch.nn.Module) -> int:
    """Bytes of a checkpoint holding the module's state dict."""
    return sum(t.numel() * t.element_size() + TENSOR_OVERHEAD for t in module.state_dict().values())


def network_bytes(cfg: dict) -> dict:
    """State-dict bytes of the teacher, HKD and the digit classifier of a config (built on
    the meta device: no memory, no time)."""
    from hkd.koopman.model import build_hkd
    from hkd.metrics.classifier import DigitClassifier
    from hkd.nn.precond import EDMPrecond
    from hkd.teacher.network import teacher_kwargs

    with torch.device("meta"):
        teacher = EDMPrecond(**teacher_kwargs(cfg))
        hkd = build_hkd(teacher, cfg)
        return {
            "teacher": _state_bytes(teacher),
            "hkd": _state_bytes(hkd),
            "classifier": _state_bytes(DigitClassifier(resolution=cfg["data"]["resolution"])),
        }


def _npz(*arrays: tuple[int, int]) -> int:
    """Bytes of an uncompressed .npz of arrays given as (values, bytes per value)."""
    return sum(n * b + 128 for n, b in arrays)


def _stored_states(cfg: dict) -> int:
    from hkd.teacher.trajectories import stored_indices

    t = cfg["trajectories"]
    return len(stored_indices(t["num_steps"], t["store_every"]))


def _hkd_examples(cfg: dict) -> int:
    """Examples x time points one HKD training computes (the stage's unit of work)."""
    h, n = cfg["hkd"], cfg["trajectories"]["count"]
    batch = min(h["batch_size"], n)
    return h["epochs"] * (n // batch) * batch * (h["time_points"] + 1)


def _nfe(cfg: dict) -> int:
    """Teacher evaluations of one trajectory (Heun, 2 per step but the last)."""
    return 2 * cfg["trajectories"]["num_steps"] - 1


def _reference_count(cfg: dict) -> int:
    d = cfg["data"]
    return d["count"] - d["heldout"] if cfg["evaluate"]["reference"] == "train" else d["heldout"]


def _files(cfg: dict, stage: str, variant: str | None, sizes: dict) -> dict:
    """Every declared output of a job with its estimated size (None: small). A training's
    resume state is deleted when it finishes, so it is not counted."""
    out = {}
    for key, value in pipeline.stage_outputs(cfg, stage, variant).items():
        for path in value if isinstance(value, list) else [value]:
            out[path] = sizes.get(key)
    return out


def _sizes(cfg: dict, nets: dict) -> dict:
    """Estimated bytes of each sizeable file kind (run_paths keys)."""
    v, n_img = _image_values(cfg), cfg["data"]["count"]
    samples = _npz((cfg["sample"]["count"] * v, 4), (cfg["sample"]["count"], 8), (cfg["sample"]["count"], 8))
    shard = cfg["trajectories"]["shard_size"]
    return {
        "data": _npz((n_img * v, 1), (n_img, 8), (n_img, 8)),
        "classifier": nets["classifier"],
        "teacher": nets["teacher"],
        "shard": _npz((min(shard, cfg["trajectories"]["count"]) * _stored_states(cfg) * v, 2)),
        "hkd": nets["hkd"],
        "variant_hkd": nets["hkd"],
        "hkd_snapshots": nets["hkd"],
        "variant_snapshots": nets["hkd"],
        "samples_teacher": samples,
        "samples_hkd": samples,
        "samples_teacher_nfe": samples,
        "variant_samples": samples,
    }


def _jobs_of_run(cfg: dict, prefix: str, sizes: dict, extended: dict | None = None) -> list[Job]:
    """The jobs of a run (``extended`` None) or of a tier over the config ``extended``."""
    jobs = []
    for stage in pipeline.STAGES:
        companion = prefix and extended is None
        if (companion and not stage.conditional) or not pipeline.tier_owns(cfg, extended, stage.name):
            continue
        for variant in pipeline.own_variants(cfg, extended) if stage.per_variant else [None]:
            name = prefix + stage.name + (f"[{variant}]" if variant else "")
            job = Job(
                name,
                stage.name,
                _files(cfg, stage.name, variant, sizes),
                inputs=_flat(pipeline.stage_inputs(cfg, stage.name, variant)),
            )
            _fill(job, cfg, variant)
            jobs.extend(_split_shards(job, cfg, sizes) if stage.name == "trajectories" else [job])
    return jobs


def _flat(paths: dict) -> set:
    return {p for v in paths.values() for p in (v if isinstance(v, list) else [v])}


def _fill(job: Job, cfg: dict, variant: str | None) -> None:
    """The work of one job, in units of the benchmark's rates."""
    st, e = job.stage, cfg["evaluate"]
    count, ref = cfg["sample"]["count"], _reference_count(cfg)
    if st == "classifier":
        job.work = {
            "classifier_train": e["classifier_epochs"] * (cfg["data"]["count"] - cfg["data"]["heldout"])
        }
    elif st == "teacher" and cfg["teacher"]["source"] == "train":
        job.work, job.compiles = {"teacher_train": cfg["teacher"]["kimg"] * 1000}, ["teacher_train"]
    elif st in ("hkd_train", "variant_train"):
        vcfg = pipeline.variant_config(cfg, variant) if variant else cfg
        job.work, job.compiles = {"hkd_train": _hkd_examples(vcfg)}, ["hkd_train"]
    elif st == "teacher_sample":
        nfes = [_nfe(cfg)] + list(cfg["sample"]["extra_teacher_nfe"])
        reused = (
            min(count, cfg["trajectories"]["count"])
            if cfg["sample"]["teacher_seeds"] == "trajectories"
            else 0
        )
        job.work = {"denoiser": count * sum(nfes) - reused * _nfe(cfg)}
        job.compiles, job.held_bytes = ["denoiser"] * len(nfes), count * _image_values(cfg) * 4
    elif st == "sample":
        job.work, job.held_bytes = {"one_step": count}, count * _image_values(cfg) * 4
    elif st == "evaluate":
        rows = 2 + len(cfg["sample"]["extra_teacher_nfe"]) + ("no_koopman" in cfg["ablations"])
        thr = e["throughput_batch"] * (e["throughput_repeats"] + 1)
        job.work = {
            "features": ref + cfg["data"]["heldout"] + rows * count,
            "denoiser": thr * _nfe(cfg),
            "one_step": thr,
        }
        job.held_bytes = (rows + 1) * count * _image_values(cfg) * 4
    elif st == "variant_evaluate":
        job.work = {"features": ref + count, "one_step": count}
    elif st == "stability":
        runs = 1 + len(pipeline.curve_variants(cfg))
        # the model before training, and each snapshot but the final weights (scored by evaluate)
        scored = 1 + runs * len([e for e in cfg["hkd"]["snapshot_epochs"] if e != cfg["hkd"]["epochs"] - 1])
        job.work = {"features": ref + scored * count, "one_step": scored * count}
    elif st == "recipe_controls":
        job.work = recipe_controls_work(cfg)
    elif st == "figures":
        a = cfg["analysis"]
        job.work = {"denoiser": a["seeds"] * _nfe(cfg) + a["inpaint"]["images"] * a["inpaint"]["steps"] * 2}


def recipe_controls_work(cfg: dict) -> dict:
    """The held-out trajectories (denoiser calls) and each checked model's predictions, in
    one-step units (an encode and a decode): per trajectory and input time one encode and a
    decode per target and the end, twice (trained, operators zeroed)."""
    from hkd.metrics.prediction import pair_indices

    n = cfg["study"]["heldout_trajectories"]
    per_trajectory = sum(
        (2 + len(targets)) / 2 for _, targets in pair_indices(cfg["trajectories"]["num_steps"])
    )
    models = 1 + len(pipeline.seed_variants(cfg)) + len(pipeline.study_variants(cfg))
    return {"denoiser": n * _nfe(cfg), "one_step": 2 * models * n * per_trajectory}


def _split_shards(job: Job, cfg: dict, sizes: dict) -> list[Job]:
    """The trajectories stage runs one job per shard (each compiles), then writes the manifest."""
    t = cfg["trajectories"]
    shards = []
    for k, path in enumerate(pipeline.trajectory_shard_paths(cfg)):
        n = min(t["shard_size"], t["count"] - k * t["shard_size"])
        shards.append(
            Job(
                job.name.replace("trajectories", "trajectory_shard") + f"[{k}]",
                "trajectories",
                {path: sizes["shard"] * n // min(t["shard_size"], t["count"])},
                {"denoiser": n * _nfe(cfg)},
                ["denoiser"],
                sizes["shard"],
                job.inputs,
            )
        )
    return shards + [Job(job.name, "trajectories", job.files, inputs={p for s in shards for p in s.files})]


def jobs(cfg: dict, extended: dict | None = None) -> list[Job]:
    """Every job of the config's ``all``, the companion run's included; for a tier (``extended``:
    the config it extends) the jobs of ``snakemake <tier>`` after that config's ``all``."""
    nets = network_bytes(cfg)
    if extended is not None:
        return _jobs_of_run(cfg, f"{cfg['tier']}_", _sizes(cfg, nets), extended)
    out = []
    for prefix, rcfg, _flag in pipeline.dag_runs(cfg):
        out += _jobs_of_run(rcfg, prefix, _sizes(rcfg, nets if not prefix else network_bytes(rcfg)))
    return out


def job_seconds(job: Job, bench: dict, speed: dict | None = None) -> float:
    """Start, work over the benchmark's rates (each times ``speed[workload]``, default 1),
    and the first call of each path the job compiles."""
    w = bench["workloads"]
    missing = [k for k in list(job.work) + job.compiles if k not in w]
    if missing:
        raise KeyError(f"benchmark of {bench['config']} has no {missing}")
    speed = speed or {}
    return (
        STARTUP_SECONDS
        + sum(units / (w[k]["rate"] * speed.get(k, 1.0)) for k, units in job.work.items())
        + sum(w[k]["first_call_seconds"] for k in job.compiles)
    )


def job_memory(job: Job, bench: dict, key: str) -> int | None:
    peaks = [
        bench["workloads"][k][key]
        for k in set(job.work) | set(job.compiles)
        if bench["workloads"][k].get(key) is not None
    ]
    return (max(peaks) + job.held_bytes) if peaks else None


def plan(cfg: dict, root: str | Path = "benchmarks", extended: dict | None = None) -> dict:
    """Per job: files with sizes, and per device kind with a stored benchmark, seconds and
    peak memory; totals (time as if the jobs ran one after another, each with the
    benchmark's threads). A tier (``extended``: the config it extends) plans its own jobs."""
    benches = {kind: find_benchmark(cfg, kind, root) for kind in ("cpu", "cuda")}
    rows, planned = [], jobs(cfg, extended)
    for job in planned:
        row = {"job": job.name, "files": job.files, "disk_bytes": sum(v for v in job.files.values() if v)}
        for kind, bench in benches.items():
            if bench is not None:
                row[kind] = {
                    "seconds": job_seconds(job, bench),
                    "peak_ram_bytes": job_memory(job, bench, "peak_rss_bytes"),
                    "peak_gpu_bytes": job_memory(job, bench, "peak_gpu_bytes") if kind == "cuda" else None,
                }
        rows.append(row)
    total = {"disk_bytes": sum(r["disk_bytes"] for r in rows)}
    for kind, bench in benches.items():
        if bench is not None:
            seconds = [r[kind]["seconds"] for r in rows]
            total[kind] = {
                "seconds": sum(seconds),
                "peak_ram_bytes": max(r[kind]["peak_ram_bytes"] or 0 for r in rows),
                "threads_per_job": bench["threads"],
                "elapsed_seconds_by_cores": {
                    c: elapsed_seconds(planned, seconds, c, bench["threads"])
                    for c in ELAPSED_CORES
                    if c >= bench["threads"]
                },
            }
            scaling = find_thread_scaling(cfg, root) if kind == "cpu" else None
            if scaling is not None:
                total[kind]["rules_threads"] = {
                    "measured": scaling["measured"],
                    "elapsed_seconds_by_cores": {
                        c: rules_elapsed_seconds(cfg, planned, bench, scaling, c) for c in ELAPSED_CORES
                    },
                }
            if "teacher_train" in bench["workloads"]:
                w = bench["workloads"]["teacher_train"]
                total[kind]["teacher_step_seconds"] = w["batch"] / w["rate"]
    return {
        "digest": cost_digest(cfg),
        "jobs": rows,
        "total": total,
        "benchmarks": {k: _bench_summary(b) for k, b in benches.items()},
    }


def _bench_summary(b: dict | None) -> dict | None:
    """Where and when a benchmark was measured, with the speed index of that session
    (``reference`` None: measured without one, before ``hkd bench --reference`` existed)."""
    if b is None:
        return None
    out = {key: b[key] for key in ("measured", "device", "cpu", "threads", "config", "torch")}
    return out | {"reference": brief(b.get("reference"))}


def scale_to_index(p: dict, index: float) -> dict:
    """The plan with its CPU times moved from the day its benchmark was measured to a day
    whose speed index (``hkd bench --reference``) is ``index`` s/step: each time x ``index``
    over the index stored with the benchmark. A slower or faster machine stretches every job
    alike, so the DAG's wall times scale by the same ratio. A benchmark stored without an
    index cannot be scaled: that is an error, not an unscaled plan."""
    b = p["benchmarks"]["cpu"]
    if b is None:
        raise ValueError("--index scales CPU times, and no CPU benchmark is stored for this config")
    if b["reference"] is None:
        raise ValueError(
            f"the stored CPU benchmark (measured {b['measured']} from {b['config']}) has no speed index "
            "recorded (it predates `hkd bench --reference`), so its times cannot be scaled to --index; "
            f"rerun `hkd bench --config {b['config']}` to store one with it, or plan without --index"
        )
    factor = index / b["reference"]["seconds_per_step"]
    out = copy.deepcopy(p)
    for row in out["jobs"]:
        row["cpu"]["seconds"] *= factor
    total = out["total"]["cpu"]
    total["seconds"] *= factor
    _scale_values(total["elapsed_seconds_by_cores"], factor)
    if "rules_threads" in total:
        _scale_values(total["rules_threads"]["elapsed_seconds_by_cores"], factor)
    if "teacher_step_seconds" in total:
        total["teacher_step_seconds"] *= factor
    out["index"] = {"today": index, "stored": b["reference"], "factor": factor}
    return out


def _scale_values(seconds: dict, factor: float) -> None:
    for key, value in seconds.items():
        seconds[key] = None if value is None else value * factor


def elapsed_seconds(jobs: list[Job], seconds: list[float], cores: int, threads: int | list[int]) -> float:
    """Wall time of the DAG when each job takes min(threads, cores) cores (one number for
    all, or one per job) for its ``seconds``, and a job starts, by its rule's priority and then
    in plan order, as soon as its inputs exist and its cores are free (what Snakemake does
    with --cores). A computation,
    not a measurement: the seconds must already include any slowdown of jobs side by side."""
    needs = [min(t, cores) for t in (threads if isinstance(threads, list) else [threads] * len(jobs))]
    order = sorted(range(len(jobs)), key=lambda i: -_priority(jobs[i]))  # ties: plan order
    made_by = {f: i for i, j in enumerate(jobs) for f in j.files}
    deps = [{made_by[f] for f in j.inputs if f in made_by} for j in jobs]
    done_at, running, now, free = {}, [], 0.0, cores
    while len(done_at) < len(jobs):
        started = {i for _, i in running}
        for i in order:
            if (
                i not in done_at
                and i not in started
                and free >= needs[i]
                and all(d in done_at for d in deps[i])
            ):
                running.append((now + seconds[i], i))
                free -= needs[i]
                started.add(i)
        running.sort()
        now, i = running.pop(0)
        done_at[i] = now
        free += needs[i]
    return now


def _priority(job: Job) -> int:
    """The Snakemake priority of the job's rule (pipeline.RULE_PRIORITIES)."""
    return pipeline.rule_priority(job.stage, job.name.startswith(f"{pipeline.CONDITIONAL}_"))


def rules_elapsed_seconds(
    cfg: dict, planned: list[Job], bench: dict, scaling: dict, cores: int
) -> float | None:
    """Wall time on ``cores`` with the threads the rules give each job (pipeline.rule_threads),
    a job's work slowed or sped up by the rate its workloads reached in the thread benchmark
    at that many threads with every core busy, relative to one job with the benchmark's
    threads; None where a needed layout was not measured."""
    speed = _thread_speeds(scaling, cores, bench["threads"])
    seconds, threads = [], []
    for job in planned:
        t = rule_threads(cfg, job.stage, cores) if job.work else 1
        if t != bench["threads"] and any((w, t) not in speed for w in job.work):
            return None
        seconds.append(job_seconds(job, bench, {w: speed.get((w, t), 1.0) for w in job.work}))
        threads.append(t)
    return elapsed_seconds(planned, seconds, cores, threads)


def _thread_speeds(scaling: dict, cores: int, bench_threads: int) -> dict:
    """{(workload, threads): rate per job with ``cores`` busy at that many threads each,
    relative to one job with the benchmark's threads}, for the layouts measured."""
    out = {}
    for w, rows in scaling["workloads"].items():
        base = [r["rate_per_job"] for r in rows if r["jobs"] == 1 and r["threads"] == bench_threads]
        for r in rows:
            if base and r["jobs"] * r["threads"] == cores:
                out[(w, r["threads"])] = r["rate_per_job"] / base[0]
    return out


def _size(n: int | None) -> str:
    if n is None:
        return "small"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _time(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.2f} h"


def _index_lines(p: dict) -> list[str]:
    """The speed index a CPU plan's times stand for: the benchmark's own, or today's given
    with --index (and the ratio the times were scaled by)."""
    b = p["benchmarks"].get("cpu")
    if b is None:
        return []
    ref, scaled = b["reference"], p.get("index")
    if scaled:
        return [
            f"  cpu: times scaled to today's speed index {scaled['today']:.2f} s/step: x {scaled['factor']:.3f} "
            f"of the benchmark's times (its index {ref['seconds_per_step']:.2f} s/step, measured "
            f"{ref['measured'][:10]}, {ref['threads']} threads)"
        ]
    if ref is None:
        return [
            "  cpu: times of the day the benchmark was measured; no speed index was recorded with it "
            "(it predates `hkd bench --reference`), so --index cannot scale them"
        ]
    return [
        f"  cpu: times of the day the benchmark was measured, speed index {ref['seconds_per_step']:.2f} s/step; "
        "`hkd plan --index S` scales them to today's (S from `hkd bench --reference`)"
    ]


def format_plan(p: dict, config_file: str) -> str:
    lines = [f"plan of {config_file} (cost settings {p['digest']})"]
    if "tier" in p:
        lines.append(
            f"  the tier {p['tier']['name']}: its own jobs, run by `snakemake {p['tier']['name']}` after "
            f"`all` of {p['tier']['after']}"
        )
    for kind, b in p["benchmarks"].items():
        lines.append(
            f"  {kind}: "
            + (
                f"throughputs measured {b['measured']} on {b['device']} ({b['cpu']}), "
                f"{b['threads']} threads, torch {b['torch']}"
                if b
                else f"no stored benchmark; run `hkd bench --config {config_file} --device {kind}` "
                f"there to time this plan"
            )
        )
    lines += _index_lines(p)
    head = f"  {'job':48s} {'disk':>10s}"
    kinds = [k for k, b in p["benchmarks"].items() if b]
    for kind in kinds:
        head += f" {kind + ' time':>12s} {kind + ' RAM':>10s}" + (
            f" {'GPU mem':>10s}" if kind == "cuda" else ""
        )
    lines.append(head)
    for r in p["jobs"]:
        line = f"  {r['job'][:48]:48s} {_size(r['disk_bytes'] or None):>10s}"
        for kind in kinds:
            line += f" {_time(r[kind]['seconds']):>12s} {_size(r[kind]['peak_ram_bytes']):>10s}"
            line += f" {_size(r[kind]['peak_gpu_bytes']):>10s}" if kind == "cuda" else ""
        lines.append(line)
    t = p["total"]
    total = f"  {'all (one job after another)':48s} {_size(t['disk_bytes']):>10s}"
    for kind in kinds:
        total += f" {_time(t[kind]['seconds']):>12s} {_size(t[kind]['peak_ram_bytes']):>10s}"
    lines.append(total)
    for kind in kinds:
        t_kind = t[kind]
        lines.append(
            f"  {kind}: computed wall time of all, {t_kind['threads_per_job']} threads per job, jobs side "
            "by side where the DAG allows (assumes they do not slow each other): "
            + ", ".join(f"{c} cores {_time(s)}" for c, s in t_kind["elapsed_seconds_by_cores"].items())
        )
        rules = t_kind.get("rules_threads")
        if rules:
            known = {c: v for c, v in rules["elapsed_seconds_by_cores"].items() if v is not None}
            lines.append(
                f"  {kind}: with the threads the rules give each job, scaled by the thread benchmark of "
                f"{rules['measured']}: "
                + (
                    ", ".join(f"{c} cores {_time(v)}" for c, v in known.items())
                    or "no core count whose layouts were all measured"
                )
            )
        if "teacher_step_seconds" in t_kind:
            lines.append(
                f"  {kind}: the teacher training step: {t_kind['teacher_step_seconds']:.2f} s"
                + (
                    " scaled to today's index"
                    if kind == "cpu" and "index" in p
                    else " when measured (this machine's speed varies from day to day)"
                )
            )
    return "\n".join(lines)
