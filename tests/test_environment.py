"""environment.yml (conda) and pyproject.toml (pip) must pin the same packages."""

import re

import tomllib
import yaml


def _pins(lines):
    out = {}
    for line in lines:
        name, _, version = line.partition("==")
        assert version, f"unpinned requirement {line!r}"
        out[name.strip().lower()] = version.strip()
    return out


def _conda_pip_pins(path):
    env = yaml.safe_load(path.read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(pip) == 1, f"{path}: expected one pip: section"
    return env, _pins(pip[0])


def test_environment_yml_matches_pyproject(repo):
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    env, conda = _conda_pip_pins(repo / "environment.yml")
    assert conda == _pins(project["dependencies"])
    assert "python=3.11" in env["dependencies"]


def test_rule_env_files_parse_and_agree(repo):
    _, reference = _conda_pip_pins(repo / "environment.yml")
    envs = list((repo / "workflow" / "envs").glob("*.yaml"))
    assert envs, "no conda env files under workflow/envs"
    for path in envs:
        _, pins = _conda_pip_pins(path)
        for name, version in pins.items():
            assert reference.get(name) == version, f"{path}: {name}=={version} differs from environment.yml"


def test_every_rule_has_a_conda_env(repo):
    for smk in (repo / "workflow" / "rules").glob("*.smk"):
        text = smk.read_text()
        # top-level rules and the per-run rules defined in a loop (`rule:` with `name:`)
        rules = re.findall(r"^\s*rule(?: \w+)?:", text, flags=re.M)
        assert len(rules) == len(re.findall(r"^\s+conda:", text, flags=re.M)), (
            f"{smk.name}: a rule lacks a conda: directive"
        )
