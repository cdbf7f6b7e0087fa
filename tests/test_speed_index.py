"""The speed index (`hkd bench --reference`): a fixed network whatever the configs say, its
stored result, the benchmark that records it, `hkd plan --index`, the line every stage starts
with and the report's provenance. The measurement itself is faked where only the plumbing is
under test (a real reference step takes seconds)."""

import json
from pathlib import Path

import pytest
from test_cost import fake_bench

from hkd import cli
from hkd.config import load_config
from hkd.cost import bench, reference
from hkd.cost.plan import format_plan, plan, scale_to_index
from hkd.report.build import provenance

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"


def fake_measurement(*args, **kwargs):
    """``measure_one``'s output for the teacher training workload: median step 2.0 s."""
    return {
        "rate": 50.0,
        "batch": 128,
        "first_call_seconds": 9.0,
        "step_seconds": [3.0, 1.0, 2.0],
        "unit": "images/s",
        "steps": 3,
        "peak_rss_bytes": 2**30,
        "peak_gpu_bytes": None,
    }


def stored_reference(seconds_per_step=2.0, measured="2026-12-06T08:00:00+00:00", **change) -> dict:
    """A stored reference of this machine (``change``: fields made different)."""
    m = dict(fake_measurement(), step_seconds=[seconds_per_step])
    versions = {"device": "cpu", "torch": "t"}
    return reference.reference_result(m, measured, 2, 1, versions) | change


def test_the_reference_network_is_fixed_in_code(monkeypatch):
    def no_config(*args, **kwargs):
        raise AssertionError("the reference read a config file")

    monkeypatch.setattr("hkd.config.load_config", no_config)
    cfg = reference.reference_config()
    assert cfg["network"] == {
        "model_channels": 32,
        "channel_mult": [1, 2, 2],
        "num_blocks": 1,
        "attn_resolutions": [8],
        "dropout": 0.0,
        "augment_dim": 0,
        "label_dim": 0,
        "channel_mult_emb": 4,
    }
    assert (cfg["teacher"]["batch_size"], cfg["precision"], cfg["compile"]) == (128, "fp32", False)
    assert bench.reference_parameters() == 1_259_393
    cfg["network"]["channel_mult"].append(4)  # a caller's change does not reach the next one
    assert reference.reference_config()["network"]["channel_mult"] == [1, 2, 2]
    assert bench.reference_parameters() == 1_259_393


def test_the_reference_config_runs_the_teacher_training_workload():
    """Every key the real training loop reads is in the reference config (at batch 2 here:
    the timing of each step, not the network's size, is under test)."""
    cfg = reference.reference_config()
    cfg["teacher"]["batch_size"] = 2
    out = bench.measure_one(cfg, "teacher_train", steps=2, threads=1)
    assert len(out["step_seconds"]) == 2 and all(s > 0 for s in out["step_seconds"])


def test_bench_reference_stores_the_median_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # hkd runs outside the checkout (conftest's guard)
    monkeypatch.setattr(bench, "_run_isolated", fake_measurement)
    assert cli.main(["bench", "--reference"]) == 0
    (path,) = (tmp_path / "benchmarks").glob("reference-*.json")
    stored = json.loads(path.read_text())
    assert stored["seconds_per_step"] == 2.0 and stored["step_seconds"] == [3.0, 1.0, 2.0]
    assert (stored["threads"], stored["batch"], stored["parameters"]) == (2, 128, 1_259_393)
    assert reference.newest_reference(tmp_path / "benchmarks") == stored
    cmd, _ = bench.isolated_command(None, "teacher_train", 5, 2, "cpu", tmp_path / "r.json")
    assert "--reference" in cmd and "--config" not in cmd


def test_bench_of_a_config_records_the_reference_of_its_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "_run_isolated", fake_measurement)
    assert cli.main(["bench", "--config", str(SMOKE), "--device", "cpu"]) == 0
    cfg = load_config(SMOKE)
    stored = json.loads(bench.default_path(cfg, "cpu", tmp_path / "benchmarks").read_text())
    assert stored["reference"]["seconds_per_step"] == 2.0
    assert reference.newest_reference(tmp_path / "benchmarks") == stored["reference"]


def benchmark_with(cfg, ref: dict | None) -> dict:
    return fake_bench(cfg) | {"reference": ref}


def test_plan_index_scales_times_by_the_ratio_of_the_indices(tmp_path, capsys):
    cfg = load_config(SMOKE)
    (tmp_path / "x-cpu.json").write_text(json.dumps(benchmark_with(cfg, stored_reference(2.0))))
    p = plan(cfg, tmp_path)
    scaled = scale_to_index(p, 3.0)
    for row, new in zip(p["jobs"], scaled["jobs"]):
        assert new["cpu"]["seconds"] == pytest.approx(1.5 * row["cpu"]["seconds"])
    t, s = p["total"]["cpu"], scaled["total"]["cpu"]
    assert s["seconds"] == pytest.approx(1.5 * t["seconds"])
    assert s["elapsed_seconds_by_cores"][8] == pytest.approx(1.5 * t["elapsed_seconds_by_cores"][8])
    assert s["teacher_step_seconds"] == pytest.approx(1.5 * t["teacher_step_seconds"])
    assert "speed index 2.00 s/step" in format_plan(p, "smoke.yaml")
    assert cli.main(["plan", "--config", str(SMOKE), "--benchmarks", str(tmp_path), "--index", "3"]) == 0
    assert "scaled to today's speed index 3.00 s/step: x 1.500" in capsys.readouterr().out


def test_plan_index_refuses_a_benchmark_without_a_reference(tmp_path, capsys):
    cfg = load_config(SMOKE)
    (tmp_path / "x-cpu.json").write_text(json.dumps(benchmark_with(cfg, None)))
    p = plan(cfg, tmp_path)
    assert "no speed index was recorded" in format_plan(p, "smoke.yaml")
    with pytest.raises(ValueError, match="has no speed index recorded"):
        scale_to_index(p, 3.0)
    assert cli.main(["plan", "--config", str(SMOKE), "--benchmarks", str(tmp_path), "--index", "3"]) == 1
    assert "cannot be scaled" in capsys.readouterr().err


def run_data_stage(monkeypatch, capsys) -> tuple[str, dict]:
    """``hkd data`` with the stage's work left out: (its first output line, its timing record)."""
    monkeypatch.setitem(cli.STAGE_FUNCTIONS, "data", lambda cfg, paths, args: {})
    assert cli.main(["data", "--config", str(SMOKE)]) == 0
    timing = Path("results/smoke/logs/timings/data.json")
    return capsys.readouterr().out.splitlines()[0], json.loads(timing.read_text())


def test_every_stage_starts_with_the_speed_index(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    line, timing = run_data_stage(monkeypatch, capsys)
    assert line == "speed index: not measured on this machine at 2 threads (run hkd bench --reference)"
    assert timing["speed_index"] is None
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    other = stored_reference(1.0, "2026-12-07T00:00:00+00:00", machine="another machine")
    for r in (stored_reference(2.5), stored_reference(2.0, "2026-12-05T00:00:00+00:00"), other):
        reference.reference_path(r, folder).write_text(json.dumps(r))
    line, timing = run_data_stage(monkeypatch, capsys)
    cpu = reference.cpu_model()
    assert line == f"speed index: 2.50 s/step (hkd bench --reference, 2026-12-06, {cpu})"
    assert timing["speed_index"]["seconds_per_step"] == 2.5


def test_provenance_carries_the_speed_index(smoke_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    timings = tmp_path / "timings"
    timings.mkdir()
    base = {"seconds": 1.0, "finished": "2026-12-06 09:00:00", "compiled": {}}
    ref = reference.brief(stored_reference(2.5))
    (timings / "a.json").write_text(json.dumps(base | {"stage": "teacher", "speed_index": ref}))
    (timings / "b.json").write_text(json.dumps(base | {"stage": "sample", "speed_index": None}))
    (timings / "c.json").write_text(json.dumps(base | {"stage": "data"}))  # written before the index
    cfg = smoke_cfg | {"conditional": False}
    metrics = {"device": "cpu", "threads": 2, "precision": "float32", "teacher_precision": "float32"}
    p = provenance(cfg, {"timings": str(timings), "run_timings": str(timings)}, metrics)
    assert [t["speed_index"] for t in p["timings"]] == [
        "2.50 s/step, 2026-12-06",
        "not measured",
        "not recorded",
    ]
    assert p["speed_index"].startswith("not measured on this machine")
    r = stored_reference(2.5)
    (tmp_path / "benchmarks").mkdir()
    reference.reference_path(r, tmp_path / "benchmarks").write_text(json.dumps(r))
    assert provenance(cfg, {"timings": str(timings), "run_timings": str(timings)}, metrics)[
        "speed_index"
    ].startswith("2.50 s/step")
