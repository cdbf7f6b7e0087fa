import copy
import subprocess
import sys

import pytest
import yaml

from hkd.config import ConfigError, load_config, validate_config


@pytest.mark.parametrize("name", ["default", "smoke", "cifar10", "cifar10_cond", "ffhq64"])
def test_shipped_configs_are_valid(repo, name):
    cfg = load_config(repo / "configs" / f"{name}.yaml")
    assert cfg["run"] == name


def _set(cfg, dotted, value):
    *parents, last = dotted.split(".")
    for p in parents:
        cfg = cfg[p]
    if value is _DROP:
        del cfg[last]
    else:
        cfg[last] = value


_DROP = object()


@pytest.mark.parametrize(
    "config,changes,match",
    [
        ("cifar10", {"teacher.kimg": 5}, r"'teacher\.kimg' is only read when teacher\.source is 'train'"),
        (
            "mnist_long",
            {"teacher.path": "x.pkl"},
            r"'teacher\.path' is only read when teacher\.source is 'edm_pickle'",
        ),
        (
            "default",
            {"teacher.kimg": 10},
            r"'teacher\.kimg' is only read when teacher\.source is 'train'",
        ),
        (
            "default",
            {"teacher.conditional_path": _DROP},
            r"key 'teacher\.conditional_path': the class-conditional companion imports",
        ),
        ("cifar10", {"evaluate.classifier_lr": 0.1}, r"'evaluate\.classifier_lr' is only read"),
        ("cifar10", {"teacher.path": _DROP}, r"key 'teacher': 'path' is a required property"),
        (
            "cifar10",
            {
                "evaluate.feature_extractor": "digit_classifier",
                "evaluate.classifier_epochs": 1,
                "evaluate.classifier_batch_size": 8,
                "evaluate.classifier_lr": 0.1,
            },
            r"evaluate\.feature_extractor",
        ),
        ("default", {"data.heldout": 0, "evaluate.reference": "train"}, r"data\.heldout"),
        ("cifar10", {"evaluate.reference": "heldout"}, r"evaluate\.reference"),
        ("cifar10", {"data.count": 50001}, r"data\.count.*50000"),
        ("default", {"sample.extra_teacher_nfe": [16]}, r"sample\.extra_teacher_nfe.*16 must be odd"),
        (
            "default",
            {"sample.extra_teacher_nfe": [35]},
            r"sample\.extra_teacher_nfe.*differ from the trajectories' 35",
        ),
        ("default", {"ablations": ["no_koopman", "no_koopman"]}, r"key 'ablations'.*non-unique"),
        (
            "default",
            {"hkd.epochs": 28, "hkd.snapshot_epochs": [0, 28]},
            r"hkd\.snapshot_epochs.*\[28\] not below hkd\.epochs \(28",
        ),
        ("default", {"stability.seeds": [0, 1]}, r"stability\.seeds.*0 is the run's own seed"),
        ("claims", {"hkd.snapshot_epochs": []}, r"stability\.seeds' needs hkd\.snapshot_epochs"),
        ("default", {"ablations": ["no_decoder"]}, r"key 'ablations\.0'.*no_decoder"),
        ("cifar10", {"data.resolution": 64}, r"data\.resolution"),
        ("ffhq64", {"data.path": None}, r"data\.path"),
        ("cifar10_cond", {"network.label_dim": 5}, r"network\.label_dim.*10 classes"),
        ("default", {"data.md5": "0" * 32}, r"data\.path"),
        ("cifar10_cond", {"conditional": True}, r"key 'conditional': the run is already class-conditional"),
        (
            "cifar10",
            {"conditional": True},
            r"key 'teacher.conditional_path': the class-conditional companion imports",
        ),
        ("ffhq64", {"conditional": True}, r"key 'conditional': the image_folder source has no class labels"),
        ("default", {"conditional": "yes"}, r"conditional"),
        ("default", {"analysis.seeds": 4001}, r"key 'analysis\.seeds': 4001 seeds"),
        ("default", {"analysis.edit.pairs": [[0, 4000]]}, r"key 'analysis\.edit\.pairs': seed offset 4000"),
        (
            "default",
            {"analysis.inpaint.images": 1001},
            r"key 'analysis\.inpaint\.images'.*held-out split has 1000",
        ),
        (
            "default",
            {"analysis.band_edges": [0.0, 0.5, 0.4, 1.0]},
            r"key 'analysis\.band_edges' must increase",
        ),
        ("default", {"analysis.edit.band": 3}, r"key 'analysis\.edit\.band': 3 is not a band"),
        ("cifar10", {"data.md5": "abc"}, r"data\.md5"),
        ("default", {"ablation_seeds": [0]}, r"ablation_seeds.*0 is the run's own seed"),
        ("default", {"ablations": [], "ablation_seeds": [1]}, r"ablation_seeds' needs ablations"),
        ("default", {"study.recipes": {"paper": {"decoder": "boundary"}}}, r"study\.recipes"),
        ("default", {"study.recipes": {"x": {"lr": 0.1}}}, r"study\.recipes\.x"),
        ("default", {"study.recipes": {"x": {}}}, r"study\.recipes\.x"),
    ],
)
def test_cross_key_rules_name_the_key(repo, config, changes, match):
    cfg = copy.deepcopy(load_config(repo / "configs" / f"{config}.yaml"))
    for k, v in changes.items():
        _set(cfg, k, v)
    with pytest.raises(ConfigError, match=match):
        validate_config(cfg)


def test_trained_teacher_refuses_augment_labels(smoke_cfg):
    """Teacher training has no augmentation pipeline, so EDM's augmentation-label layer would
    be built and never trained: refused, naming both keys and the two ways out."""
    cfg = copy.deepcopy(smoke_cfg)
    cfg["network"]["augment_dim"] = 9
    with pytest.raises(ConfigError, match=r"keys 'teacher\.source' and 'network\.augment_dim'") as err:
        validate_config(cfg)
    msg = str(err.value)
    assert "teacher.source: train with network.augment_dim: 9" in msg
    assert "set network.augment_dim: 0" in msg and "teacher.source: edm_pickle" in msg
    cfg["network"]["augment_dim"] = 0
    validate_config(cfg)


def test_unknown_key_is_named(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["teacher"]["learning_rate"] = 0.1
    with pytest.raises(ConfigError, match=r"teacher.*learning_rate"):
        validate_config(cfg)


def test_unknown_top_level_key_is_named(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["tecaher"] = {}
    with pytest.raises(ConfigError, match="tecaher"):
        validate_config(cfg)


def test_wrong_type_is_named(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["hkd"]["batch_size"] = "32"
    with pytest.raises(ConfigError, match=r"hkd\.batch_size"):
        validate_config(cfg)


def test_overlapping_seeds_rejected(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["sample"]["seed_offset"] = cfg["trajectories"]["seed_offset"] + 1
    with pytest.raises(ConfigError, match="sample.seed_offset"):
        validate_config(cfg)
    # the teacher's row continuing the trajectory seeds must not reach the evaluation seeds
    cfg = copy.deepcopy(smoke_cfg)
    t, s = cfg["trajectories"], cfg["sample"]
    s.update(teacher_seeds="trajectories", seed_offset=t["seed_offset"] + t["count"] + 1)
    with pytest.raises(ConfigError, match="sample.teacher_seeds"):
        validate_config(cfg)
    s["teacher_seeds"] = "evaluation"
    validate_config(cfg)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_bad_key(tmp_path, repo):
    cfg = yaml.safe_load((repo / "configs" / "smoke.yaml").read_text())
    cfg["data"]["colour"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(
        [sys.executable, "-m", "hkd", "data", "--config", str(bad)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(repo / "src"), "PATH": ""},
    )
    assert r.returncode == 1
    assert "data" in r.stderr and "colour" in r.stderr
    assert not (tmp_path / "results").exists()


def test_snakemake_schema_rejects_unknown_key(repo, smoke_cfg):
    from snakemake.exceptions import WorkflowError
    from snakemake.utils import validate

    cfg = copy.deepcopy(smoke_cfg)
    validate(cfg, str(repo / "workflow" / "schemas" / "config.schema.yaml"))
    cfg["edm"]["sigma_maxx"] = 1.0
    with pytest.raises(WorkflowError, match="sigma_maxx"):
        validate(cfg, str(repo / "workflow" / "schemas" / "config.schema.yaml"))


def test_extends_lays_a_file_over_another(tmp_path, repo):
    """The study config is the default with its own study: recipes; a chain is followed, a
    loop and a missing parent are named."""
    study, default = (
        load_config(repo / "configs" / "claims.yaml"),
        load_config(repo / "configs" / "default.yaml"),
    )
    assert study["study"]["recipes"] and not default["study"]["recipes"]
    assert study["hkd"] == default["hkd"] and study["study"]["base"] != default["study"]["base"]
    (tmp_path / "a.yaml").write_text(f"extends: {repo / 'configs' / 'smoke.yaml'}\nhkd:\n  epochs: 3\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nseed: 7\n")
    b = load_config(tmp_path / "b.yaml")
    assert (
        b["seed"] == 7
        and b["hkd"]["epochs"] == 3
        and b["hkd"]["batch_size"] == load_config(repo / "configs" / "smoke.yaml")["hkd"]["batch_size"]
    )
    (tmp_path / "loop.yaml").write_text("extends: loop2.yaml\n")
    (tmp_path / "loop2.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml.*extended by"):
        load_config(tmp_path / "orphan.yaml")
