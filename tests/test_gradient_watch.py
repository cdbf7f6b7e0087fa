"""Non-finite gradients are counted and, beyond a few steps, stop training with an error
naming the step, the parameters and the compile key; nothing is zeroed silently."""

import copy

import pytest
import torch
from test_compile_guard import NaNGradient

from hkd import compile_guard
from hkd.gradient_watch import STEP_LIMIT, GradientWatch, NonFiniteGradients


def nan_gradients(fn):
    def wrapped(*args, **kwargs):
        out = fn(*args, **kwargs)
        if isinstance(out, tuple):
            return (NaNGradient.apply(out[0]),) + out[1:]
        return NaNGradient.apply(out)

    return wrapped


def test_watch_counts_warns_then_stops(capsys):
    net = torch.nn.Linear(3, 2)
    watch = GradientWatch(net.named_parameters(), "a path nobody built")
    net(torch.ones(1, 3)).sum().backward()
    assert watch.count(0) == 0
    net.weight.grad[0, 0] = float("nan")
    for step in range(1, STEP_LIMIT + 1):
        assert watch.count(step) == 1
    assert "non-finite gradient elements at step 1 in 1 of 2 parameters (weight)" in capsys.readouterr().err
    with pytest.raises(
        NonFiniteGradients, match=rf"step {STEP_LIMIT + 1} .*\(weight\).*more than {STEP_LIMIT}"
    ):
        watch.count(STEP_LIMIT + 1)
    assert watch.summary()["nonfinite_gradient_steps"] == STEP_LIMIT + 1


def test_loss_scaler_overflow_never_stops():
    net = torch.nn.Linear(3, 2)
    watch = GradientWatch(net.named_parameters(), "p")
    net(torch.ones(1, 3)).sum().backward()
    net.bias.grad[0] = float("inf")
    for step in range(10):
        watch.count(step, scaler_skips=True)
    assert watch.summary() == {
        "nonfinite_gradient_steps": 0,
        "nonfinite_gradient_elements": 10,
        "loss_scaler_overflow_steps": 10,
    }


def test_teacher_training_stops_on_nan_gradients(smoke_cfg, tmp_path, monkeypatch):
    """The teacher's loss stays finite while every gradient is NaN (what a broken compiled
    backward did): training stops after STEP_LIMIT + 1 steps, naming the parameters."""
    from hkd.data.dataset import build_dataset
    from hkd.teacher import train as teacher_train

    cfg = copy.deepcopy(smoke_cfg)
    cfg.update(precision="fp32")
    cfg["teacher"].update(kimg=0.5, batch_size=20)
    build_dataset(cfg, str(tmp_path / "data.npz"), str(tmp_path / "data.json"))
    monkeypatch.setattr(teacher_train, "edm_loss", nan_gradients(teacher_train.edm_loss))
    with pytest.raises(NonFiniteGradients) as err:
        teacher_train.train_teacher(
            cfg,
            str(tmp_path / "data.npz"),
            str(tmp_path / "teacher.pt"),
            str(tmp_path / "tb"),
            torch.device("cpu"),
            None,
        )
    msg = str(err.value)
    assert f"at step {STEP_LIMIT}" in msg and "model.enc" in msg and "ran eagerly" in msg
    assert not (tmp_path / "teacher.pt").exists()


def test_hkd_training_skips_and_stops_naming_the_compile_key(tmp_path, smoke_cfg, monkeypatch, capsys):
    """HKD, compiled (here by a stand-in compiler that the guard accepts): bad steps are
    skipped (weights stay finite), then the run stops and names 'compile: false'."""
    from test_hkd_resume_ddp import make_run, train

    from hkd.train import hkd_train

    cfg, teacher, work = make_run(tmp_path, smoke_cfg)
    cfg["compile"] = True
    monkeypatch.setattr(torch, "compile", lambda module: module)
    monkeypatch.setattr(hkd_train, "hkd_distances", nan_gradients(hkd_train.hkd_distances))
    compile_guard.reset_decisions()
    with pytest.raises(NonFiniteGradients, match=r"(?s)at step 3 .*compile: false") as err:
        train(cfg, teacher, work, "nan")
    assert "unet.map_layer0.weight" in str(err.value) and "resume" in str(err.value)
    assert capsys.readouterr().err.count("warning: the HKD training step") == STEP_LIMIT
    state = torch.load(work / "nan-resume.pt", weights_only=False)  # saved at step 2 (checkpoint_every)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_nan_gradients_in_a_compiled_step_make_auto_fall_back(tmp_path, smoke_cfg, monkeypatch, capsys):
    """A compiled HKD step that turns to NaN gradients after a few steps (its first check
    passed): the watch counts one bad step and asks the guard to check again; the check
    fails, the step runs eagerly from then on and training ends normally."""
    from test_hkd_resume_ddp import make_run, train

    invocations = {"n": 0}

    def turns_nan(module):
        def run(*args):
            invocations["n"] += 1
            out = module(*args)
            return NaNGradient.apply(out) if invocations["n"] >= 4 else out

        return run

    cfg, teacher, work = make_run(tmp_path, smoke_cfg)
    cfg["compile"] = "auto"
    monkeypatch.setattr(torch, "compile", turns_nan)
    compile_guard.reset_decisions()
    stats = train(cfg, teacher, work, "late-nan")
    assert stats["steps"] == 9 and stats["nonfinite_gradient_steps"] == 1
    err = capsys.readouterr().err
    assert "checked against eager on the next call" in err and "running it eagerly" in err
    d = compile_guard.decisions()["the HKD training step"]
    assert not d["compiled"] and "non-finite gradients" in d["reason"]
