"""The teacher trainer follows EDM's training loop: loss summed over pixels and divided by the
batch, lr ramp from the images before each step, EMA ramp-up from the images before the
step's batch; a killed run resumes to the weights of an uninterrupted one, and a state without
the lr schedule (an earlier version's) is ignored, not half-restored."""

import copy

import pytest
import torch

from hkd.ema import EMA
from hkd.teacher import train as teacher_train

CPU = torch.device("cpu")


@pytest.fixture
def setup(smoke_cfg, tmp_path):
    """The smoke teacher on its digits, 6 steps of 20 images, a resume state every 2 steps."""
    from hkd.data.dataset import build_dataset

    cfg = copy.deepcopy(smoke_cfg)
    cfg.update(precision="fp32", compile=False)
    cfg["teacher"].update(kimg=0.12, batch_size=20, checkpoint_every=2, log_every=2)
    data = tmp_path / "data.npz"
    build_dataset(cfg, str(data), str(tmp_path / "data.json"))
    return cfg, str(data), tmp_path


def train(cfg, data, work, name):
    return teacher_train.train_teacher(
        cfg,
        data,
        str(work / f"{name}.pt"),
        str(work / f"tb-{name}"),
        CPU,
        None,
        resume_path=str(work / f"{name}-resume.pt"),
    )


def ema_weights(path):
    return torch.load(path, weights_only=True)["ema"]


def saved_states(monkeypatch) -> list[dict]:
    """Every resume state the trainer writes, kept in memory."""
    states = []
    real = teacher_train.save_training_state

    def keep(path, fingerprint, parts, gen, **position):
        states.append(
            {
                **{k: copy.deepcopy(p.state_dict()) for k, p in parts.items()},
                **copy.deepcopy(position),
            }
        )
        real(path, fingerprint, parts, gen, **position)

    monkeypatch.setattr(teacher_train, "save_training_state", keep)
    return states


def test_ema_pairs_tensors_by_name():
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    ema = EMA(net, halflife_kimg=1.0, rampup_ratio=0.05)
    assert ema.beta(0, 20) == 0.0  # EDM's first step: the average becomes the network
    with torch.no_grad():
        net[0].weight.add_(1.0)
        net[1].running_mean.add_(2.0)
    ema.update(net, 0, 20)
    assert torch.equal(ema.net[0].weight, net[0].weight)
    assert torch.equal(ema.net[1].running_mean, net[1].running_mean)
    other = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.LayerNorm(3))  # same shapes, no buffers
    with pytest.raises(ValueError, match=r"buffers do not match.*'1\.running_mean'"):
        ema.update(other, 100, 20)
    renamed = torch.nn.ModuleDict({"lin": torch.nn.Linear(2, 3), "bn": torch.nn.BatchNorm1d(3)})
    with pytest.raises(ValueError, match=r"parameters do not match.*position 0.*'lin\.weight'.*'0\.weight'"):
        ema.update(renamed, 100, 20)


def test_step_reduces_as_edm_and_counts_images_before_the_batch(setup, monkeypatch):
    cfg, data, work = setup
    tcfg = cfg["teacher"]
    tcfg.update(ema_halflife_kimg=10.0, ema_rampup_ratio=0.5, checkpoint_every=1)
    states = saved_states(monkeypatch)
    train(cfg, data, work, "edm")
    first, second = states[0], states[1]
    assert (first["step"], second["step"]) == (1, 2)

    # step 0: Adam's first moment is (1 - beta1) x the gradient of sum(per-pixel loss) / batch
    run = teacher_train._build(cfg, data, None, CPU)
    y, labels = teacher_train._next_batch(run, CPU)
    edm = cfg["edm"]
    per_pixel = teacher_train.edm_loss(
        run.net, y, run.gen, edm["P_mean"], edm["P_std"], edm["sigma_data"], CPU, None, labels
    )
    (per_pixel.sum() / tcfg["batch_size"]).backward()
    grads = [p.grad for p in run.net.parameters()]
    moments = [first["opt"]["state"][i]["exp_avg"] for i in range(len(grads))]
    for g, m in zip(grads, moments):
        torch.testing.assert_close(m, 0.1 * g, rtol=1e-4, atol=1e-9)

    # lr of step 1: EDM's ramp from the 20 images seen before it
    assert first["opt"]["param_groups"][0]["lr"] == tcfg["lr"] * 20 / (tcfg["lr_rampup_kimg"] * 1000)

    # EMA after step 1 (20 images before its batch): beta 0.5 ** (20 / (0.5 * 20)) = 0.25; counting
    # the batch too would give 0.5 ** (20 / (0.5 * 40)) = 0.5
    net1 = torch.cat([v.flatten() for k, v in first["net"].items() if v.is_floating_point()])
    ema1 = torch.cat([v.flatten() for k, v in first["ema"].items() if v.is_floating_point()])
    net2 = torch.cat([v.flatten() for k, v in second["net"].items() if v.is_floating_point()])
    ema2 = torch.cat([v.flatten() for k, v in second["ema"].items() if v.is_floating_point()])
    torch.testing.assert_close(ema1, net1, rtol=0, atol=0)  # step 0 had beta 0
    moved, kept = ema1 - net2, ema2 - net2
    beta = float((kept * moved).sum() / (moved * moved).sum())
    assert abs(beta - 0.25) < 1e-3, beta


def test_resume_matches_uninterrupted_and_ignores_old_states(setup, monkeypatch, capsys):
    cfg, data, work = setup
    stats = train(cfg, data, work, "full")
    assert stats["steps"] == 6 and stats["resumed_from_step"] is None
    assert not (work / "full-resume.pt").exists()

    real, calls = teacher_train.edm_loss, []

    def dies_at_step_5(*a, **k):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt  # killed during step 4, after the step-4 save
        return real(*a, **k)

    monkeypatch.setattr(teacher_train, "edm_loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, work, "cut")
    monkeypatch.setattr(teacher_train, "edm_loss", real)
    state = torch.load(work / "cut-resume.pt", weights_only=True)
    assert state["step"] == 4 and "schedule" in state

    old = dict(state)
    del old["schedule"]  # what a state of the trainer that set the lr by hand lacked

    stats = train(cfg, data, work, "cut")
    assert stats["resumed_from_step"] == 4
    full, cut = ema_weights(work / "full.pt"), ema_weights(work / "cut.pt")
    assert full.keys() == cut.keys() and all(torch.equal(full[k], cut[k]) for k in full)

    torch.save(old, work / "cut-resume.pt")
    capsys.readouterr()
    stats = train(cfg, data, work, "cut")
    assert stats["resumed_from_step"] is None
    assert "it lacks schedule (an earlier version's state)" in capsys.readouterr().out
    assert all(torch.equal(full[k], v) for k, v in ema_weights(work / "cut.pt").items())
