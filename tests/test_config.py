import copy
import subprocess
import sys

import pytest
import yaml

from hkd.config import ConfigError, load_config, validate_config


@pytest.mark.parametrize("name", ["default", "smoke"])
def test_shipped_configs_are_valid(repo, name):
    cfg = load_config(repo / "configs" / f"{name}.yaml")
    assert cfg["run"] == name


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


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_bad_key(tmp_path, repo):
    cfg = yaml.safe_load((repo / "configs" / "smoke.yaml").read_text())
    cfg["data"]["colour"] = True
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([sys.executable, "-m", "hkd", "data", "--config", str(bad)], cwd=tmp_path,
                       capture_output=True, text=True, env={"PYTHONPATH": str(repo / "src"), "PATH": ""})
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
