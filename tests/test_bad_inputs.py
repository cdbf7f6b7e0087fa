"""Bad inputs through the stage commands: each exits non-zero with an error naming the file
or config key, and leaves the outputs already there untouched."""

import copy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

SRC = str(Path(__file__).resolve().parents[1] / "src")


def hkd(work, *args):
    r = subprocess.run(
        [sys.executable, "-m", "hkd", *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"},
    )
    return r.returncode, r.stdout + r.stderr


def write(work, cfg, name="bad.yaml"):
    (work / name).write_text(yaml.safe_dump(cfg, sort_keys=False))
    return name


def sentinel(work, cfg, key="teacher"):
    """An output of an earlier stage, which a failing stage must not touch."""
    from hkd.pipeline import run_paths

    path = work / run_paths(cfg)[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"earlier output")
    return path


def case_unknown_key(work, cfg):
    cfg["hkd"]["learnig_rate"] = 0.1
    return ["data", "--config", write(work, cfg)], ["hkd", "learnig_rate"]


def case_wrong_type(work, cfg):
    cfg["hkd"]["epochs"] = "ten"
    return ["data", "--config", write(work, cfg)], ["hkd.epochs", "ten"]


def case_missing_dataset_file(work, cfg, paper):
    cfg = copy.deepcopy(paper)
    cfg["data"]["path"] = str(work / "nowhere" / "cifar-10-python.tar.gz")
    return ["data", "--config", write(work, cfg)], ["nowhere/cifar-10-python.tar.gz", "not found"]


def case_corrupt_archive(work, cfg, paper):
    cfg = copy.deepcopy(paper)
    bad = work / "cifar-10-python.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08 this is not a tar archive")
    cfg["data"]["path"] = str(bad)
    return ["data", "--config", write(work, cfg)], [str(bad), "corrupt CIFAR-10 archive"]


def case_cut_archive_without_md5(work, cfg, paper):
    """A local archive with ``md5: null`` missing its last byte: the gzip trailer is checked."""
    from test_cifar10 import make_archive

    cfg = copy.deepcopy(paper)
    archive = work / "cifar-10-python.tar.gz"
    make_archive(archive)
    archive.write_bytes(archive.read_bytes()[:-1])
    cfg["data"].update(path=str(archive), md5=None)
    return ["data", "--config", write(work, cfg)], [str(archive), "truncated or corrupt CIFAR-10 archive"]


def case_text_file_as_edm_pickle(work, cfg, paper):
    cfg = copy.deepcopy(paper)
    notes = work / "edm-cifar10-32x32-uncond-vp.pkl"
    notes.write_text("these are notes, not a network\n")
    cfg["teacher"]["path"] = str(notes)
    return ["teacher", "--config", write(work, cfg)], [f"not an EDM network pickle: {notes} (a text file)"]


def case_nan_in_data(work, cfg):
    from hkd.pipeline import run_paths

    data = work / run_paths(cfg)["data"]
    data.parent.mkdir(parents=True, exist_ok=True)
    images = np.full((4, 1, 32, 32), np.nan, np.float32)
    labels = np.zeros(4, np.int64)
    np.savez(data, train_images=images, train_labels=labels, heldout_images=images, heldout_labels=labels)
    return ["classifier", "--config", write(work, cfg)], [str(run_paths(cfg)["data"]), "must be uint8"]


def case_not_a_checkpoint(work, cfg):
    from hkd.pipeline import run_paths

    hkd_path = work / run_paths(cfg)["hkd"]
    hkd_path.parent.mkdir(parents=True, exist_ok=True)
    hkd_path.write_bytes(b"not a checkpoint")
    return ["spectral", "--config", write(work, cfg)], [str(run_paths(cfg)["hkd"])]


CASES = {
    "unknown config key": case_unknown_key,
    "wrong type": case_wrong_type,
    "missing dataset file": case_missing_dataset_file,
    "corrupt archive": case_corrupt_archive,
    "cut archive without md5": case_cut_archive_without_md5,
    "text file as EDM pickle": case_text_file_as_edm_pickle,
    "NaN in data": case_nan_in_data,
    "unreadable checkpoint": case_not_a_checkpoint,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_named_and_earlier_outputs_survive(name, tmp_path, smoke_cfg, repo):
    from hkd.config import load_config

    cfg = copy.deepcopy(smoke_cfg)
    paper = load_config(repo / "configs" / "cifar10.yaml")
    paper["downloads"] = str(tmp_path / "downloads")
    fn = CASES[name]
    kept = [sentinel(tmp_path, cfg), sentinel(tmp_path, paper)]
    args, words = fn(tmp_path, cfg, paper) if fn.__code__.co_argcount == 3 else fn(tmp_path, cfg)
    rc, out = hkd(tmp_path, *args)
    assert rc != 0, out
    for w in words:
        assert w in out, f"{name}: {w!r} not in:\n{out[-2000:]}"
    assert "Traceback" not in out, out[-2000:]
    for path in kept:
        assert path.read_bytes() == b"earlier output", path


def test_truncated_trajectory_shard_stops_training(tmp_path, smoke_cfg):
    """A shard cut short (a copy interrupted, a full disk) fails the sha256 check against the
    manifest before training starts; the previous HKD checkpoint stays."""
    import torch
    from test_trajectories import write_teacher

    from hkd.teacher import trajectories as tj

    cfg = copy.deepcopy(smoke_cfg)
    cfg.update(run="r", precision="fp32", compile=False)
    cfg["trajectories"].update(count=12, num_steps=4, shard_size=6, batch_size=6)
    root = tmp_path / "results" / "r"
    teacher = write_teacher(root / "teacher" / "teacher.pt", cfg=cfg)
    tj.generate_trajectories(
        cfg,
        teacher,
        str(root / "teacher" / "teacher.pt"),
        str(root / "trajectories"),
        torch.device("cpu"),
    )
    shard = root / "trajectories" / "shard-00001.npz"
    shard.write_bytes(shard.read_bytes()[:-1000])
    previous = sentinel(tmp_path, cfg, "hkd")
    rc, out = hkd(tmp_path, "hkd-train", "--config", write(tmp_path, cfg), "--threads", "1")
    assert rc != 0 and "shard-00001.npz" in out and "Traceback" not in out, out[-2000:]
    assert previous.read_bytes() == b"earlier output"


@pytest.mark.parametrize("kind", ["teacher", "hkd"])
def test_checkpoint_from_another_config_is_refused(kind, tmp_path, smoke_cfg):
    """A checkpoint left in the run's folder by a config with another architecture (here a
    16 px teacher under the 32 px smoke config) stops the next stage, naming the file and the
    differing keys; the checkpoint and the outputs already there stay."""
    import torch
    from test_trajectories import write_teacher

    from hkd.koopman.model import HKD, hkd_checkpoint
    from hkd.pipeline import run_paths

    cfg = copy.deepcopy(smoke_cfg)
    paths = run_paths(cfg)
    teacher = write_teacher(tmp_path / paths["teacher"])
    if kind == "teacher":
        ckpt, stage, kept = paths["teacher"], "trajectories", sentinel(tmp_path, cfg, "trajectories")
    else:
        model = HKD(teacher, eps=0.002, sigma_max=80.0)
        ckpt, stage, kept = paths["hkd"], "spectral", sentinel(tmp_path, cfg, "spectral")
        (tmp_path / ckpt).parent.mkdir(parents=True, exist_ok=True)
        torch.save(hkd_checkpoint(model, teacher.init_kwargs), tmp_path / ckpt)
    before = (tmp_path / ckpt).read_bytes()
    rc, out = hkd(tmp_path, stage, "--config", write(tmp_path, cfg), "--threads", "1")
    assert rc != 0, out
    for w in (
        str(ckpt),
        "img_resolution: 16 in the network, 32 from the config",
        "attn_resolutions: [8] in the network, [16] from the config",
    ):
        assert w in out, f"{w!r} not in:\n{out[-2000:]}"
    assert out.count(" from the config") == 2, out  # arguments left at their defaults are no difference
    assert "Traceback" not in out, out[-2000:]
    assert (tmp_path / ckpt).read_bytes() == before and kept.read_bytes() == b"earlier output"


def _raise_deep(exc):
    """Raise ``exc`` two calls down, so that a traceback shows where."""

    def inner():
        raise exc

    inner()


@pytest.fixture
def cli_run(tmp_path, smoke_cfg, monkeypatch, capsys):
    """``run(exc, *args)``: ``hkd spectral --config <smoke config> *args`` in-process in
    ``tmp_path``, its stage function replaced by one raising ``exc`` (None: the real stage);
    returns (exit status, stdout, stderr)."""
    from hkd import cli

    monkeypatch.chdir(tmp_path)
    config = write(tmp_path, copy.deepcopy(smoke_cfg))

    def run(exc, *args):
        if exc is not None:
            monkeypatch.setitem(cli.STAGE_FUNCTIONS, "spectral", lambda cfg, paths, a: _raise_deep(exc))
        rc = cli.main(["spectral", "--config", config, *args])
        out = capsys.readouterr()
        return rc, out.out, out.err

    return run


def test_unexpected_error_traceback_goes_to_the_log(cli_run, tmp_path):
    """With --log (what Snakemake's rules pass) the terminal gets one line with the type, the
    message's first line and where the traceback is; the log gets the whole traceback."""
    log = tmp_path / "results" / "smoke" / "logs" / "spectral.log"
    log.parent.mkdir(parents=True)
    log.write_text("earlier output of the rule\n")
    rc, out, err = cli_run(TypeError("boom\nsecond line"), "--log", str(log))
    assert rc == 1 and out.startswith("speed index: ") and out.count("\n") == 1  # the stage's start line only
    assert err == f"hkd spectral: error: TypeError: boom (traceback in {log})\n", err
    text = log.read_text()
    assert text.startswith(
        "earlier output of the rule\nhkd spectral: traceback\nTraceback (most recent call last)"
    ), text
    assert "in _raise_deep" in text and "in inner" in text and text.endswith("TypeError: boom\nsecond line\n")


def test_unexpected_error_without_log_prints_its_traceback(cli_run):
    """A direct call (or dvc repro) without --log: the traceback on stderr, then the line."""
    rc, _, err = cli_run(KeyError("teacher"))
    lines = err.splitlines()
    assert rc == 1 and lines[0] == "Traceback (most recent call last):" and "in inner" in err
    assert lines[-1] == "hkd spectral: error: KeyError: 'teacher' (traceback above)", lines[-1]


def test_project_message_stays_one_line(cli_run, tmp_path, smoke_cfg):
    """An error the project raises itself (a checkpoint that is not one) is its one-line
    message, without --log and with it; with it the traceback is in the log all the same."""
    from hkd.pipeline import run_paths

    checkpoint = tmp_path / run_paths(smoke_cfg)["hkd"]
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"not a checkpoint")
    rc, _, err = cli_run(None)
    assert rc == 1 and err.count("\n") == 1 and err.startswith("hkd spectral: error: cannot read"), err
    assert str(run_paths(smoke_cfg)["hkd"]) in err and "traceback" not in err.lower()
    log = tmp_path / "spectral.log"
    rc, _, logged = cli_run(None, "--log", str(log))
    assert rc == 1 and logged == err
    text = log.read_text()
    assert text.startswith("hkd spectral: traceback\nTraceback (most recent call last)"), text
    assert f"RuntimeError: {err.removeprefix('hkd spectral: error: ')}" in text


def test_which_errors_are_the_projects_messages(tmp_path):
    """A raise statement in src/hkd is a message; the same kinds from a failed operation in
    src/hkd (a dict lookup, a tensor op) or from outside it need their traceback."""
    import torch

    from hkd.config import load_config
    from hkd.failures import is_project_message
    from hkd.koopman.operators import evolve_pairs
    from hkd.pipeline import run_paths

    def caught(fn, *args):
        try:
            fn(*args)
        except Exception as exc:
            return exc
        raise AssertionError(f"{fn.__name__} raised nothing")

    assert is_project_message(caught(load_config, tmp_path / "absent.yaml"))
    assert not is_project_message(caught(run_paths, {}))  # KeyError of a subscript
    z, a = torch.zeros(1, 4, 2, 2), torch.zeros(2, 3, 3)
    assert not is_project_message(caught(evolve_pairs, z, a, a, torch.zeros(1)))  # torch's RuntimeError
    assert not is_project_message(caught(_raise_deep, ValueError("raised outside src/hkd")))
    assert not is_project_message(caught(_raise_deep, TypeError("not a message kind")))
