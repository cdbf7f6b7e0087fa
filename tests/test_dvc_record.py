"""DVC records a Snakemake run only where dvc.yaml describes it (the whole round trip through
Snakemake, DVC and a remote: test_end_to_end.check_dvc_records_the_run)."""

import yaml
from conftest import copy_workflow

from hkd.cli import main
from hkd.config import load_config
from hkd.dvc_record import missing_outputs, record_problem, record_run, run_config_of

SMOKE = "configs/smoke.yaml"


def test_a_run_is_recorded_only_where_dvc_yaml_is_its_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(copy_workflow(tmp_path))
    ran = run_config_of(SMOKE)
    assert str(ran) == "results/smoke/config.yaml"
    assert "is not a DVC repository (`dvc init`" in record_problem(SMOKE, ran)
    (tmp_path / ".dvc").mkdir()
    assert "run: hkd dvc-yaml --config configs/smoke.yaml" in record_problem(SMOKE, ran)  # the default's
    assert main(["dvc-yaml", "--config", SMOKE]) == 0
    assert "results/smoke/config.yaml is missing: no Snakemake run" in record_problem(SMOKE, ran)
    cfg = load_config(SMOKE)
    ran.parent.mkdir(parents=True)
    ran.write_text(yaml.safe_dump(dict(cfg, hkd=dict(cfg["hkd"], lr=0.5))))
    assert "changed by --config or a further --configfile" in record_problem(SMOKE, ran)
    ran.write_text(yaml.safe_dump(cfg))
    assert record_problem(SMOKE, ran) is None
    # nothing computed yet: nothing is committed, and the message says what is missing
    assert "results/smoke/data/images.npz" in missing_outputs("dvc.yaml")
    capsys.readouterr()
    assert record_run(SMOKE, ran) == 1
    assert "output(s) of dvc.yaml are missing (results/smoke/data/images.npz" in capsys.readouterr().err


def test_the_command_names_a_tier_that_does_not_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(copy_workflow(tmp_path))
    assert main(["dvc-commit", "--config", SMOKE, "--tier", "claim"]) == 1
    assert "--tier 'claim': the tiers are claims" in capsys.readouterr().err
