"""Sharded, resumable teacher trajectories: seeds, labels, stored grid, manifest, resume,
regeneration of a single trajectory, and torchrun splitting the shards."""

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from hkd.io import load_json
from hkd.nn.precond import EDMPrecond
from hkd.teacher import trajectories as tj
from hkd.teacher.network import load_teacher, save_teacher
from hkd.teacher.sampler import edm_sigmas, seeded_inputs

KW = dict(
    img_resolution=16,
    img_channels=1,
    label_dim=0,
    model_channels=8,
    channel_mult=[1, 2],
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
    channel_mult_emb=2,
)


def write_teacher(path, seed=0, cfg=None, **over):
    """A random teacher checkpoint: the small ``KW`` network, or with ``cfg`` the network that
    config describes (what the stage commands check a teacher checkpoint against)."""
    from hkd.teacher.network import teacher_kwargs

    torch.manual_seed(seed)
    net = EDMPrecond(**dict(teacher_kwargs(cfg) if cfg is not None else KW, **over))
    with torch.no_grad():  # EDM zero-initialises output layers: make the network do something
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_teacher(net, path)
    return load_teacher(str(path))


@pytest.fixture
def setup(tmp_path, smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["precision"] = cfg["teacher_precision"] = "fp32"
    cfg["trajectories"].update(count=10, num_steps=4, shard_size=4, batch_size=3, store_every=1)
    teacher_path = tmp_path / "teacher.pt"
    teacher = write_teacher(teacher_path)
    return cfg, teacher, str(teacher_path), tmp_path / "traj"


def generate(cfg, teacher, teacher_path, out, **kw):
    return tj.generate_trajectories(cfg, teacher, teacher_path, str(out), torch.device("cpu"), **kw)


def test_shards_manifest_and_single_trajectory_regeneration(setup):
    cfg, teacher, teacher_path, out = setup
    summary = generate(cfg, teacher, teacher_path, out)
    assert summary["shards"] == 3 and summary["count"] == 10
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.npz",
        "shard-00001.npz",
        "shard-00002.npz",
    ]
    m = load_json(out / "manifest.json")
    assert [e["count"] for e in m["shards"]] == [4, 4, 2] and m["nfe"] == 7
    assert m["bytes_per_trajectory_states"] == 5 * 16 * 16 * 2
    d = tj.load_trajectories(str(out / "manifest.json"))
    assert d["states"].shape == (10, 5, 1, 16, 16) and d["states"].dtype == np.float16
    np.testing.assert_array_equal(d["seeds"], np.arange(10))
    assert (d["labels"] == -1).all()
    np.testing.assert_allclose(d["sigmas"], edm_sigmas(4, 0.002, 80.0, 7.0).numpy())
    np.testing.assert_allclose(
        d["states"][:, 0].astype(np.float32),
        80.0 * seeded_inputs(range(10), (1, 16, 16))[0].numpy(),
        rtol=1e-3,
        atol=0.05,
    )
    # trajectory 7 from its seed alone (a batch of one) is the stored one
    denoise = tj.make_denoiser(teacher, torch.device("cpu"), None)
    alone, _ = tj.generate_batch(
        denoise, np.array([7]), (1, 16, 16), 0, edm_sigmas(4, 0.002, 80.0, 7.0), np.arange(5), "cpu"
    )
    np.testing.assert_allclose(
        alone[0].astype(np.float32), d["states"][7].astype(np.float32), rtol=2e-3, atol=2e-3
    )


def test_interrupted_run_keeps_finished_shards(setup, monkeypatch):
    cfg, teacher, teacher_path, out = setup
    calls = []
    real = tj.generate_batch

    def failing(*args, **kw):
        if len(calls) == 2:  # shard 0 = 2 batches; the first batch of shard 1 fails
            raise KeyboardInterrupt
        calls.append(args[1])
        return real(*args, **kw)

    monkeypatch.setattr(tj, "generate_batch", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(cfg, teacher, teacher_path, out)
    assert sorted(p.name for p in out.iterdir()) == ["shard-00000.npz"]  # no half-written file
    first = (out / "shard-00000.npz").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(tj, "generate_batch", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1])
    summary = generate(cfg, teacher, teacher_path, out)
    assert summary["generated_shards"] == 2 and summary["trajectories_generated"] == 6
    assert sorted(int(s) for batch in calls for s in batch) == list(range(4, 10))
    assert (out / "shard-00000.npz").stat().st_mtime_ns == first
    uninterrupted = out.parent / "again"
    generate(cfg, teacher, teacher_path, uninterrupted)
    a = tj.load_trajectories(str(out / "manifest.json"))
    b = tj.load_trajectories(str(uninterrupted / "manifest.json"))
    np.testing.assert_array_equal(a["states"], b["states"])


def test_streamed_states_are_memory_mapped_and_equal_the_loaded_set(setup):
    cfg, teacher, teacher_path, out = setup
    generate(cfg, teacher, teacher_path, out)
    full = tj.load_trajectories(str(out / "manifest.json"))
    streamed = tj.load_trajectories(str(out / "manifest.json"), stream=True)
    st = streamed["states"]
    assert isinstance(st, tj.ShardedStates) and st.shape == full["states"].shape
    assert all(isinstance(m, np.memmap) for m in st.maps) and len(st.maps) == 3
    for key in ("seeds", "labels", "sigmas"):
        np.testing.assert_array_equal(streamed[key], full[key])
    rows = np.array([9, 0, 5, 4, 3, 8, 0])  # across all three shards, unsorted, one repeat
    np.testing.assert_array_equal(st.take(rows), full["states"][rows])
    np.testing.assert_array_equal(st.head(6).take(np.arange(6)), full["states"][:6])
    with pytest.raises(IndexError, match="out of range"):
        st.head(6).take([6])
    shard = out / "shard-00002.npz"  # truncated in the states' bytes: named even without verify
    shard.write_bytes(shard.read_bytes()[:600])
    with pytest.raises(RuntimeError, match="shard-00002.npz"):
        tj.load_trajectories(str(out / "manifest.json"), verify=False, stream=True)


def test_other_teacher_regenerates_and_corruption_is_named(setup, capsys):
    cfg, teacher, teacher_path, out = setup
    generate(cfg, teacher, teacher_path, out)
    before = tj.load_trajectories(str(out / "manifest.json"))["states"]
    assert generate(cfg, teacher, teacher_path, out)["generated_shards"] == 0  # nothing to do
    other = write_teacher(teacher_path, seed=1)
    assert generate(cfg, other, teacher_path, out)["generated_shards"] == 3
    assert "made by another teacher" in capsys.readouterr().out
    after = tj.load_trajectories(str(out / "manifest.json"))["states"]
    assert not np.array_equal(before, after)

    shard = out / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="shard-00001.npz: sha256 differs"):
        tj.load_trajectories(str(out / "manifest.json"))
    assert generate(cfg, other, teacher_path, out)["generated_shards"] == 1  # truncated: redone
    (out / "shard-00002.npz").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00002.npz"):
        tj.load_trajectories(str(out / "manifest.json"))
    with pytest.raises(ValueError, match="shard 3 does not exist"):
        generate(cfg, other, teacher_path, out, shards=[3])


def test_teacher_precision_decides_the_shards_and_precision_does_not(setup, capsys):
    """The teacher runs under teacher_precision (its dtype is in each shard's fingerprint);
    the run's precision, HKD's, neither changes the states nor regenerates them."""
    cfg, teacher, teacher_path, out = setup
    generate(cfg, teacher, teacher_path, out)
    fp32 = tj.load_trajectories(str(out / "manifest.json"))["states"]
    assert generate({**cfg, "precision": "bf16"}, teacher, teacher_path, out)["generated_shards"] == 0
    bf16 = {**cfg, "teacher_precision": "bf16"}
    assert generate(bf16, teacher, teacher_path, out)["generated_shards"] == 3
    assert "made by another teacher, grid or precision" in capsys.readouterr().out
    states = tj.load_trajectories(str(out / "manifest.json"))["states"]
    assert not np.array_equal(states, fp32)
    assert load_json(out / "manifest.json")["fingerprint"] == tj.fingerprint(
        bf16, tj.sha256_file(teacher_path), torch.bfloat16
    )


def test_stored_subset_and_class_labels(setup, tmp_path):
    cfg, _, _, out = setup
    assert tj.stored_indices(18, 1).tolist() == list(range(19))
    assert tj.stored_indices(18, 4).tolist() == [0, 4, 8, 12, 16, 17, 18]
    cfg["trajectories"].update(num_steps=6, store_every=4)
    teacher_path = tmp_path / "cond.pt"
    teacher = write_teacher(teacher_path, label_dim=3)
    generate(cfg, teacher, str(teacher_path), out)
    d = tj.load_trajectories(str(out / "manifest.json"))
    grid = edm_sigmas(6, 0.002, 80.0, 7.0).numpy()
    np.testing.assert_allclose(d["sigmas"], grid[[0, 4, 5, 6]])
    assert d["states"].shape[1] == 4 and d["label_dim"] == 3
    _, labels = seeded_inputs(range(10), (1, 16, 16), 3)
    np.testing.assert_array_equal(d["labels"], labels.numpy())
    assert len(set(d["labels"].tolist())) > 1
    # the labels reach the teacher: other labels, other final images
    denoise = tj.make_denoiser(teacher, torch.device("cpu"), None)
    seeds = np.arange(4)
    sig = edm_sigmas(6, 0.002, 80.0, 7.0)
    noise, lab = seeded_inputs(seeds, (1, 16, 16), 3)
    from hkd.teacher.sampler import heun_sample, one_hot

    x_other = heun_sample(denoise, noise, sig, class_labels=one_hot((lab + 1) % 3, 3))
    assert not np.allclose(x_other.float().numpy(), d["states"][:4, -1].astype(np.float32), atol=1e-2)


def test_hkd_trains_on_a_stored_subset(setup, tmp_path):
    """Training reads the manifest and interpolates between the stored grid states."""
    from hkd.train.hkd_train import train_hkd

    cfg, teacher, teacher_path, out = setup
    cfg["trajectories"]["store_every"] = 2
    cfg["hkd"].update(epochs=1, batch_size=5)
    generate(cfg, teacher, teacher_path, out)
    stats = train_hkd(
        cfg,
        teacher,
        str(out / "manifest.json"),
        str(tmp_path / "hkd.pt"),
        str(tmp_path / "tb"),
        torch.device("cpu"),
        None,
    )
    assert stats["steps"] == 2 and stats["trajectories"] == 10


def test_torchrun_processes_split_the_shards(setup, tmp_path):
    """Two gloo processes under torchrun generate disjoint shards; the result equals one process."""
    import yaml

    cfg, _, _, _ = setup
    cfg["run"] = "dist"
    work = tmp_path / "work"
    (work / "results" / "dist" / "teacher").mkdir(parents=True)
    write_teacher(work / "results" / "dist" / "teacher" / "teacher.pt", cfg=cfg)
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(
        os.environ, PYTHONPATH=os.path.join(os.path.dirname(__file__), "..", "src"), OMP_NUM_THREADS="1"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hkd",
            "trajectories",
            "--config",
            "cfg.yaml",
            "--threads",
            "1",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    done = [line for line in r.stdout.splitlines() if '"generated_shards"' in line]
    assert sorted(int(x.split(":")[1].strip(" ,")) for x in done) == [1, 2]  # ranks took 2 and 1 shards
    traj = work / "results" / "dist" / "trajectories"
    single = tmp_path / "single"
    teacher = load_teacher(str(work / "results" / "dist" / "teacher" / "teacher.pt"))
    generate(cfg, teacher, str(work / "results" / "dist" / "teacher" / "teacher.pt"), single)
    a = tj.load_trajectories(str(traj / "manifest.json"))
    b = tj.load_trajectories(str(single / "manifest.json"))
    np.testing.assert_allclose(
        a["states"].astype(np.float32), b["states"].astype(np.float32), rtol=2e-3, atol=2e-3
    )


def test_stale_files_removed_and_bad_manifest_named(setup):
    cfg, teacher, teacher_path, out = setup
    generate(cfg, teacher, teacher_path, out)
    (out / ".shard-00001.npz.k1l2m3.tmp").write_bytes(b"half")  # left by a killed writer
    cfg["trajectories"]["count"] = 6  # now 2 shards: shard 2 no longer belongs to the set
    summary = generate(cfg, teacher, teacher_path, out)
    assert summary["generated_shards"] == 1 and summary["shards"] == 2  # shard 1 shrank to 2 trajectories
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.npz", "shard-00001.npz"]
    assert len(tj.load_trajectories(str(out / "manifest.json"))["seeds"]) == 6
    (out / "manifest.json").write_text("{")
    with pytest.raises(ValueError, match="manifest.json: not a trajectory manifest"):
        tj.load_trajectories(str(out / "manifest.json"))


@pytest.mark.parametrize("count", [16, 8])
def test_teacher_row_starts_with_the_trajectories_endpoints(setup, tmp_path, count):
    """sample.teacher_seeds: trajectories: the teacher's row is its samples of the trajectory
    seeds, the stored endpoints first (equal to sampling them again up to the states' float16
    rounding), then fresh samples of the seeds past them; with fewer images than trajectories,
    only endpoints."""
    from hkd.sample import draw, teacher_sampler, write_teacher_samples

    cfg, teacher, teacher_path, out = setup
    cfg["compile"] = False
    cfg["sample"].update(count=count, batch_size=5, extra_teacher_nfe=[], teacher_seeds="trajectories")
    generate(cfg, teacher, teacher_path, out)
    paths = {
        "teacher": teacher_path,
        "trajectories": str(out / "manifest.json"),
        "samples_teacher": str(tmp_path / "samples" / "teacher.npz"),
        "samples_teacher_nfe": str(tmp_path / "samples" / "teacher_nfe{nfe}.npz"),
    }
    write_teacher_samples(cfg, teacher, paths, torch.device("cpu"))
    row = np.load(paths["samples_teacher"])
    seeds = np.arange(count)
    np.testing.assert_array_equal(row["seeds"], seeds)
    assert row["images"].shape == (count, 1, 16, 16) and row["images"].dtype == np.float32
    again, _ = draw(teacher_sampler(cfg, teacher, "cpu"), seeds, (1, 16, 16), 0, 5, "cpu", "again")
    stored = min(count, 10)
    half_ulp = np.abs(again[:stored]) * 2.0**-11 + 2.0**-25
    assert (np.abs(row["images"][:stored] - again[:stored]) <= half_ulp).all()
    assert not np.array_equal(row["images"][:stored], again[:stored])  # the float16 round trip
    np.testing.assert_allclose(row["images"][stored:], again[stored:], rtol=0, atol=1e-6)
