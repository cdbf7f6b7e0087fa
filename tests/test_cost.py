"""`hkd bench` and `hkd plan`: the workloads run, the plan's arithmetic, the DAG's wall time,
and a plan for every config (the smoke plan against a real smoke run: test_end_to_end)."""

import json
import math
from pathlib import Path

import pytest

from hkd.config import load_config
from hkd.cost import bench
from hkd.cost.plan import Job, elapsed_seconds, find_benchmark, format_plan, job_seconds, jobs, plan

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def fake_bench(cfg, measured="2026-01-01T00:00:00+00:00", rate=100.0):
    return {
        "measured": measured,
        "config": "x.yaml",
        "device_kind": "cpu",
        "device": "cpu",
        "cpu": "test",
        "threads": 2,
        "torch": "t",
        "cost_digest": bench.cost_digest(cfg),
        "workloads": {
            w: {
                "rate": rate,
                "batch": 10,
                "first_call_seconds": 5.0,
                "peak_rss_bytes": 2**30,
                "peak_gpu_bytes": None,
            }
            for w in bench.WORKLOADS
        },
    }


@pytest.mark.parametrize(
    "workload", ["teacher_train", "denoiser", "hkd_train", "one_step", "features", "classifier_train"]
)
def test_every_workload_measures_a_rate(workload):
    cfg = load_config(SMOKE)
    out = bench.measure_one(cfg, workload, steps=1, threads=1)
    assert out["rate"] > 0 and out["first_call_seconds"] > 0 and out["peak_rss_bytes"] > 2**20
    assert out["unit"] == bench.WORKLOADS[workload][0]
    if workload == "teacher_train":  # each timed step, for the speed index's median
        assert len(out["step_seconds"]) == 1 and out["step_seconds"][0] > 0


def test_bench_writes_where_plan_finds_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # hkd runs outside the checkout (conftest's guard)
    cfg = load_config(SMOKE)
    result = bench.bench_config(
        cfg, str(SMOKE), steps=1, threads=1, device="cpu", workloads=["one_step"], with_reference=False
    )
    path = bench.default_path(cfg, "cpu", tmp_path)
    path.write_text(json.dumps(result))
    assert find_benchmark(cfg, "cpu", tmp_path)["workloads"]["one_step"]["rate"] > 0
    assert find_benchmark(cfg, "cuda", tmp_path) is None


def test_newest_matching_benchmark_wins(tmp_path):
    cfg = load_config(SMOKE)
    (tmp_path / "a-cpu.json").write_text(json.dumps(fake_bench(cfg, "2026-01-01T00:00:00+00:00", 1.0)))
    (tmp_path / "b-cpu.json").write_text(json.dumps(fake_bench(cfg, "2026-02-01T00:00:00+00:00", 2.0)))
    other = fake_bench(cfg, "2026-03-01T00:00:00+00:00", 3.0)
    other["cost_digest"] = "another config"
    (tmp_path / "c-cpu.json").write_text(json.dumps(other))
    assert find_benchmark(cfg, "cpu", tmp_path)["workloads"]["one_step"]["rate"] == 2.0


def test_job_seconds_are_work_over_rate_plus_compiles():
    b = fake_bench(load_config(SMOKE), rate=50.0)
    job = Job("x", "hkd_train", work={"hkd_train": 1000, "features": 500}, compiles=["hkd_train"])
    assert job_seconds(job, b) == pytest.approx(6.0 + 1000 / 50 + 500 / 50 + 5.0)


def test_elapsed_seconds_follow_the_dag():
    a = Job("a", "s", files={"a": 1})
    b = Job("b", "s", files={"b": 1}, inputs={"a"})
    c = Job("c", "s", files={"c": 1}, inputs={"a"})
    d = Job("d", "s", files={"d": 1}, inputs={"b", "c"})
    seconds = [10.0, 20.0, 30.0, 5.0]
    assert elapsed_seconds([a, b, c, d], seconds, cores=2, threads=2) == 65.0  # one after another
    assert elapsed_seconds([a, b, c, d], seconds, cores=4, threads=2) == 45.0  # b and c side by side
    assert (
        elapsed_seconds([d, c, b, a], seconds[::-1], cores=16, threads=2) == 45.0
    )  # order of the list is no DAG


def test_wall_time_follows_the_rule_priorities():
    """As Snakemake does, the ready job of the higher-priority rule starts first: the run's
    trajectories and training before the companion's teacher samples listed ahead of them."""
    late = Job("conditional_teacher_sample", "teacher_sample", files={"l": 1})
    other = Job("conditional_trajectory_shard[0]", "trajectories", files={"m": 1})
    head = Job("trajectory_shard[0]", "trajectories", files={"a": 1})
    tail = Job("hkd_train", "hkd_train", files={"b": 1}, inputs={"a"})
    # by list order the companion's jobs would take both cores first: 200 s
    assert elapsed_seconds([late, other, head, tail], [100.0, 50.0, 50.0, 100.0], cores=2, threads=1) == 150.0


def test_plan_counts_the_work_of_the_config():
    cfg = load_config(SMOKE)
    planned = {j.name: j for j in jobs(cfg)}
    h, t = cfg["hkd"], cfg["trajectories"]
    assert planned["hkd_train"].work["hkd_train"] == h["epochs"] * (t["count"] // h["batch_size"]) * h[
        "batch_size"
    ] * (h["time_points"] + 1)
    assert (
        planned["variant_train[no_koopman]"].work["hkd_train"] == planned["hkd_train"].work["hkd_train"] // 5
    )
    nfe, count = 2 * t["num_steps"] - 1, cfg["sample"]["count"]
    # the teacher's row starts with the trajectories' endpoints (sample.teacher_seeds: trajectories)
    assert cfg["sample"]["teacher_seeds"] == "trajectories"
    assert planned["teacher_sample"].work["denoiser"] == (count - t["count"]) * nfe + count * sum(
        cfg["sample"]["extra_teacher_nfe"]
    )
    assert planned["sample"].work == {"one_step": count}
    shards = [n for n in planned if n.startswith("trajectory_shard")]
    assert len(shards) == 2 and sum(planned[n].work["denoiser"] for n in shards) == t["count"] * nfe
    assert "conditional_hkd_train" in planned and "conditional_variant_train" not in " ".join(planned)


def test_plan_without_benchmarks_says_how_to_get_them(tmp_path):
    p = plan(load_config(SMOKE), tmp_path)
    assert "cpu" not in p["total"] and p["total"]["disk_bytes"] > 0
    assert "no stored benchmark; run `hkd bench --config" in format_plan(p, "configs/smoke.yaml")


def test_plan_with_a_benchmark_gives_times_and_wall_time(tmp_path):
    cfg = load_config(SMOKE)
    (tmp_path / "x-cpu.json").write_text(json.dumps(fake_bench(cfg)))
    p = plan(cfg, tmp_path)
    t = p["total"]["cpu"]
    assert t["seconds"] == pytest.approx(sum(r["cpu"]["seconds"] for r in p["jobs"]))
    assert t["elapsed_seconds_by_cores"][2] == pytest.approx(t["seconds"])
    assert t["elapsed_seconds_by_cores"][16] < t["elapsed_seconds_by_cores"][8] < t["seconds"]
    assert "16 cores" in format_plan(p, "configs/smoke.yaml")


@pytest.mark.parametrize("config", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_config_has_a_plan(config):
    cfg = load_config(ROOT / "configs" / config)
    p = plan(cfg, ROOT / "benchmarks")
    assert p["jobs"] and all(r["disk_bytes"] >= 0 for r in p["jobs"])
    assert format_plan(p, f"configs/{config}").count("\n") >= len(p["jobs"])


def fake_scaling(cfg, per_job_at_one_thread: float, workloads=tuple(bench.WORKLOADS)):
    return {
        "measured": "2026-01-01T00:00:00+00:00",
        "cost_digest": bench.cost_digest(cfg),
        "workloads": {
            w: [
                {"jobs": 1, "threads": 2, "rate_per_job": 1.0},
                {"jobs": 2, "threads": 1, "rate_per_job": per_job_at_one_thread},
            ]
            for w in workloads
        },
    }


def test_plan_times_the_rules_threads_from_the_thread_benchmark(tmp_path):
    from hkd.cost.plan import rules_elapsed_seconds

    cfg = load_config(SMOKE)
    b = fake_bench(cfg)
    planned = jobs(cfg)
    # jobs at one thread run at 0.75 of one 2-thread job, two at a time: faster in all
    fast = rules_elapsed_seconds(cfg, planned, b, fake_scaling(cfg, 0.75), cores=2)
    seconds = [job_seconds(j, b) for j in planned]
    assert fast is not None and fast < elapsed_seconds(planned, seconds, cores=2, threads=2)
    # ... at 0.4 each they lose to one job with both threads
    assert rules_elapsed_seconds(cfg, planned, b, fake_scaling(cfg, 0.4), cores=2) > fast
    # a workload whose 1-thread layout was not measured: no estimate rather than a guess
    assert (
        rules_elapsed_seconds(cfg, planned, b, fake_scaling(cfg, 0.75, ("teacher_train",)), cores=2) is None
    )
    (tmp_path / "x-cpu.json").write_text(json.dumps(b))
    (tmp_path / "threads-x-cpu.json").write_text(json.dumps(fake_scaling(cfg, 0.75)))
    p = plan(cfg, tmp_path)
    assert p["total"]["cpu"]["rules_threads"]["elapsed_seconds_by_cores"][2] == pytest.approx(fast)
    assert "with the threads the rules give each job" in format_plan(p, "configs/smoke.yaml")


def test_rule_memory_is_the_largest_planned_peak_of_its_jobs_times_the_margin(tmp_path):
    from hkd.cost.resources import MARGIN, rule_memory

    cfg = load_config(SMOKE)
    fake = fake_bench(cfg)
    fake["workloads"]["hkd_train"]["peak_rss_bytes"] = 3 * 2**30
    (tmp_path / "a-cpu.json").write_text(json.dumps(fake))
    memory = rule_memory(cfg, tmp_path)
    peaks = {}
    for row in plan(cfg, tmp_path)["jobs"]:
        if row["cpu"]["peak_ram_bytes"]:
            rule = row["job"].split("[")[0]
            peaks[rule] = max(peaks.get(rule, 0), row["cpu"]["peak_ram_bytes"])
    assert set(memory) == set(peaks) and {"hkd_train", "variant_train", "trajectory_shard"} <= set(memory)
    for rule, peak in peaks.items():
        assert memory[rule] == {"mem_mb": math.ceil(peak * MARGIN / 1e6)}, rule
    assert memory["hkd_train"]["mem_mb"] > 3 * 2**30 * MARGIN / 1e6 > memory["sample"]["mem_mb"]
    assert "trajectories" not in memory and "report" not in memory  # no workload: the profile's default


def test_rule_memory_without_a_usable_benchmark_sizes_nothing(tmp_path, capsys):
    from hkd.cost.resources import rule_memory

    cfg = load_config(SMOKE)
    assert rule_memory(cfg, tmp_path) == {}
    assert "no hkd bench numbers of run 'smoke'" in capsys.readouterr().err
    old = fake_bench(cfg)
    del old["workloads"]["one_step"]  # stored before a workload the config runs existed
    (tmp_path / "a-cpu.json").write_text(json.dumps(old))
    assert rule_memory(cfg, tmp_path) == {}
    assert "one_step" in capsys.readouterr().err


def test_a_cuda_run_is_sized_by_its_gpu_benchmark_where_stored(tmp_path):
    from hkd.cost.resources import MARGIN, rule_memory

    cfg = load_config(SMOKE)
    cfg["device"] = "cuda"
    (tmp_path / "a-cpu.json").write_text(json.dumps(fake_bench(cfg)))
    assert "gpu_mem_mb" not in rule_memory(cfg, tmp_path)["hkd_train"]  # host RAM from the CPU run
    gpu = fake_bench(cfg, measured="2026-02-01T00:00:00+00:00")
    gpu["device_kind"] = "cuda"
    for w in gpu["workloads"].values():
        w["peak_rss_bytes"], w["peak_gpu_bytes"] = 2**29, 5 * 2**30
    (tmp_path / "b-cuda.json").write_text(json.dumps(gpu))
    train = rule_memory(cfg, tmp_path)["hkd_train"]
    assert (
        train["gpu_mem_mb"] == math.ceil(5 * 2**30 * MARGIN / 1e6) and train["mem_mb"] < 2**30 * MARGIN / 1e6
    )
