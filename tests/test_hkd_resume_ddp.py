"""HKD training at scale: resume after a kill, NaN stop with the last good state kept,
DDP (2 gloo processes) against one process at the same global batch, ablation switches."""

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from test_trajectories import write_teacher

from hkd.io import load_torch
from hkd.koopman.model import HKD, load_hkd
from hkd.teacher import trajectories as tj
from hkd.train import hkd_train, objective

SRC = str(Path(__file__).resolve().parents[1] / "src")


def make_run(tmp_path, smoke_cfg, teacher_cfg=False):
    """A tiny teacher and 12 trajectories laid out as a run's files (results/<run>/...). The
    stage commands check the teacher against the config, so runs driven through them
    (``teacher_cfg``) use the config's own network; in-process tests use the smaller one."""
    cfg = copy.deepcopy(smoke_cfg)
    cfg.update(run="r", precision="fp32", compile=False)
    cfg["trajectories"].update(count=12, num_steps=4, shard_size=6, batch_size=6)
    cfg["hkd"].update(
        epochs=3, batch_size=4, checkpoint_every=2, log_every=1, sample_every=3, ema_halflife_kimg=0.005
    )
    root = tmp_path / "results" / "r"
    teacher = write_teacher(root / "teacher" / "teacher.pt", cfg=cfg if teacher_cfg else None)
    tj.generate_trajectories(
        cfg,
        teacher,
        str(root / "teacher" / "teacher.pt"),
        str(root / "trajectories"),
        torch.device("cpu"),
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    return cfg, teacher, tmp_path


@pytest.fixture
def run(tmp_path, smoke_cfg):
    return make_run(tmp_path, smoke_cfg)


@pytest.fixture
def cli_run(tmp_path, smoke_cfg):
    return make_run(tmp_path, smoke_cfg, teacher_cfg=True)


def train(cfg, teacher, work, name, **kw):
    return hkd_train.train_hkd(
        cfg,
        teacher,
        str(work / "results/r/trajectories/manifest.json"),
        str(work / f"{name}.pt"),
        str(work / f"tb-{name}"),
        torch.device("cpu"),
        None,
        resume_path=str(work / f"{name}-resume.pt"),
        **kw,
    )


def weights(path):
    return load_torch(path)["state"]


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


def test_resume_after_failure_matches_uninterrupted(run, monkeypatch):
    cfg, teacher, work = run
    stats = train(cfg, teacher, work, "full")
    assert stats["steps"] == 9 and not (work / "full-resume.pt").exists()  # removed when finished
    real = hkd_train.hkd_distances
    calls = []

    def dies_at_step_6(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt  # killed mid-epoch (epoch 1 of 3), after the step-4 save
        return real(*a, **k)

    monkeypatch.setattr(hkd_train, "hkd_distances", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, teacher, work, "cut")
    assert load_torch(work / "cut-resume.pt")["step"] == 4 and not (work / "cut.pt").exists()
    monkeypatch.setattr(hkd_train, "hkd_distances", real)
    stats = train(cfg, teacher, work, "cut")
    assert stats["resumed_from_step"] == 4 and stats["steps_this_run"] == 5
    assert_same(weights(work / "cut.pt"), weights(work / "full.pt"))
    # a resume state from other settings is ignored, not silently continued
    other = copy.deepcopy(cfg)
    other["hkd"]["lr"] = 0.002
    (work / "cut-resume.pt").write_bytes((work / "full.pt").read_bytes())  # not a state at all
    assert train(other, teacher, work, "cut")["resumed_from_step"] is None


def test_nan_loss_stops_and_keeps_last_good_state(run, monkeypatch):
    cfg, teacher, work = run
    real = hkd_train.hkd_distances
    calls = []

    def nan_at_step_4(*a, **k):
        calls.append(1)
        mse, lp = real(*a, **k)
        return (mse * float("nan") if len(calls) == 4 else mse), lp

    monkeypatch.setattr(hkd_train, "hkd_distances", nan_at_step_4)
    with pytest.raises(FloatingPointError, match=r"step 3.*last good state \(step 2\) is in .*nan-resume.pt"):
        train(cfg, teacher, work, "nan")
    assert load_torch(work / "nan-resume.pt")["step"] == 2 and not (work / "nan.pt").exists()


def test_sigkill_then_resume_through_the_cli(cli_run):
    """The stage command, killed with SIGKILL once it has saved a state, resumes to the same weights."""
    cfg, _, work = cli_run
    cfg["hkd"].update(epochs=40, checkpoint_every=10, log_every=1000, sample_every=0)  # 120 steps
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "hkd", "hkd-train", "--config", "cfg.yaml", "--threads", "1"]
    state, out = work / "results/r/hkd/resume.pt", work / "results/r/hkd/hkd.pt"
    p = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not state.exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert state.exists() and not out.exists(), "the run ended before it could be killed: raise hkd.epochs"
    killed_at = load_torch(state)["step"]
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from step {killed_at}" in r.stdout
    resumed = weights(out)
    snaps = work / "results/r/hkd/snapshots"  # hkd.snapshot_epochs [0, 1]: saved before the kill
    assert killed_at > 6 and not list((snaps / ".partial").iterdir())
    resumed_snaps = {e: weights(snaps / f"epoch-{e:04d}.pt") for e in (0, 1)}
    assert load_torch(snaps / "epoch-0001.pt")["stats"]["steps"] == 6  # 3 steps per epoch
    out.rename(work / "resumed.pt")
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "resuming" not in r.stdout
    assert_same(resumed, weights(out))
    for e in (0, 1):
        assert_same(resumed_snaps[e], weights(snaps / f"epoch-{e:04d}.pt"))
    assert not torch.equal(resumed_snaps[0]["koopman.alpha.0"], resumed["koopman.alpha.0"])


def assert_same_training(a, b):
    # Attention key biases have a zero gradient in exact arithmetic (softmax ignores a shift
    # shared by all keys), so their gradients are rounding noise that Adam rescales to steps of
    # up to ~lr: there two runs that sum the batch in another order agree to 1e-4 (lr 1e-3);
    # elsewhere to 5e-5 (Adam also magnifies the rounding of other near-zero gradients), far
    # below how far training moves the weights (checked in the DDP test).
    noise_only = {k for k in a if k.endswith("qkv.bias")}
    assert_same(
        {k: v for k, v in a.items() if k not in noise_only},
        {k: v for k, v in b.items() if k not in noise_only},
        atol=5e-5,
    )
    assert_same({k: a[k] for k in noise_only}, {k: b[k] for k in noise_only}, atol=1e-4)


def test_micro_batches_accumulate_to_the_batch(run):
    cfg, teacher, work = run
    train(cfg, teacher, work, "whole")
    cfg["hkd"]["micro_batch"] = 3  # batch 4 in passes of 3 + 1
    train(cfg, teacher, work, "parts")
    assert_same_training(weights(work / "parts.pt"), weights(work / "whole.pt"))


def torchrun_hkd_train(work, cfg):
    """`hkd hkd-train` under torchrun with 2 gloo processes on CPU, in ``work``."""
    (work / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "hkd",
            "hkd-train",
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


def test_two_gloo_processes_match_one(cli_run):
    """torchrun, 2 processes on CPU (gloo), global batch 4 = 2 + 2, each in passes of 1
    (gradients accumulated without DDP sync, then averaged): the weights of one process."""
    cfg, teacher, work = cli_run
    ddp_cfg = copy.deepcopy(cfg)
    ddp_cfg["hkd"]["micro_batch"] = 1
    r = torchrun_hkd_train(work, ddp_cfg)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    ddp = load_torch(work / "results/r/hkd/hkd.pt")
    assert ddp["stats"]["processes"] == 2
    train(cfg, teacher, work, "single")
    single = weights(work / "single.pt")
    assert_same_training(ddp["state"], single)
    moved = max(
        (ddp["state"][k] - teacher_like).abs().max().item()
        for k, teacher_like in load_hkd_init(cfg, teacher).items()
    )
    assert moved > 1e-3  # training did change the weights, so the comparison means something


def load_hkd_init(cfg, teacher):
    return HKD(teacher, eps=cfg["edm"]["sigma_min"], sigma_max=cfg["edm"]["sigma_max"]).state_dict()


def test_odd_global_batch_is_refused(cli_run):
    cfg, _, work = cli_run
    cfg["hkd"]["batch_size"] = 3
    r = torchrun_hkd_train(work, cfg)
    assert r.returncode != 0 and "hkd.batch_size 3 is the global batch" in r.stderr


def test_ablation_switches(run):
    """koopman off: no level evolves (x_t -> x_eps directly); hierarchy off: the bottleneck alone."""
    cfg, teacher, _ = run
    x, t = torch.randn(2, 1, 16, 16) * 20, torch.tensor([20.0, 3.0])
    variants = {}
    for koopman, hierarchy in ((True, True), (True, False), (False, True)):
        torch.manual_seed(0)
        m = HKD(teacher, eps=0.002, sigma_max=80.0, koopman=koopman, hierarchy=hierarchy).eval()
        with torch.no_grad():
            for a, b in zip(m.koopman.alpha, m.koopman.beta):
                a.normal_(0, 0.05)
                b.normal_(0, 0.05)
        variants[koopman, hierarchy] = m
    full, bottleneck, none = variants[True, True], variants[True, False], variants[False, True]
    n = full.koopman.num_levels
    assert (
        full.evolved_levels == list(range(n))
        and bottleneck.evolved_levels == [n - 1]
        and none.evolved_levels == []
    )
    frozen = [p.requires_grad for p in none.koopman.parameters()]
    assert not any(frozen) and all(p.requires_grad for p in full.koopman.parameters())
    with torch.no_grad():
        feats = none.encode(x, t)
        assert torch.equal(none(x, t), none.decode(feats))
        ev = bottleneck.evolve(bottleneck.encode(x, t), t, 0.002)
        ref = bottleneck.encode(x, t)
        assert all(torch.equal(ev[level], ref[level]) for level in range(n - 1)) and not torch.equal(
            ev[-1], ref[-1]
        )
        assert not torch.allclose(full(x, t), bottleneck(x, t))
    # the switches reach training and the checkpoint
    cfg["hkd"].update(epochs=1, koopman=False)
    m = hkd_train.train_hkd(
        cfg,
        teacher,
        str(run[2] / "results/r/trajectories/manifest.json"),
        str(run[2] / "nok.pt"),
        str(run[2] / "tb-nok"),
        torch.device("cpu"),
        None,
    )
    loaded = load_hkd(str(run[2] / "nok.pt"))
    assert m["steps"] == 3 and loaded.evolved_levels == []
    assert all((a == 0).all() for a in loaded.koopman.alpha)  # never trained


def test_lpips_term_from_local_backbone_weights(run, tmp_path):
    """perceptual: lpips-vgg with a torchvision-format VGG16 state dict (random weights here:
    the real file cannot be downloaded offline) enters the loss; a missing file names the key."""
    import torchvision

    from hkd.train.perceptual import Perceptual

    cfg, teacher, work = run
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, tmp_path / "vgg16.pth")
    lp = Perceptual("lpips-vgg", str(tmp_path / "vgg16.pth"))
    for name, v in lp.lpips.net.state_dict().items():  # the backbone came from the file
        torch.testing.assert_close(v, features.state_dict()[name.split(".", 1)[1]])
    x, y = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    d = lp(x, y)
    assert d.shape == (2,) and (d > 0).all() and torch.allclose(lp(x, x), torch.zeros(2), atol=1e-6)

    cfg["hkd"].update(perceptual="lpips-vgg", perceptual_weights=str(tmp_path / "vgg16.pth"))
    torch.manual_seed(0)
    with_lp = hkd_train.hkd_distances(
        HKD(teacher, 0.002, 80.0), *_batch(work), torch.device("cpu"), None, perceptual=lp
    )
    assert with_lp[1].shape == with_lp[0].shape == (4, 5) and (with_lp[1] > 0).all()
    cfg["hkd"]["time_points"] = 1  # VGG at 224x224 is slow on CPU: two steps of 4 x 2 pairs
    stats = train(cfg, teacher, work, "lp", stop_after=2)
    assert stats["steps"] == 2
    cfg["hkd"]["perceptual_weights"] = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="hkd.perceptual_weights.*missing.pth"):
        train(cfg, teacher, work, "lp2")


def _batch(work):
    d = tj.load_trajectories(str(work / "results/r/trajectories/manifest.json"))
    states, sigmas = torch.from_numpy(d["states"][:4]), torch.from_numpy(d["sigmas"]).double()
    t = objective.sample_times(4, 4, sigmas, torch.Generator().manual_seed(0))
    return states, sigmas, t
