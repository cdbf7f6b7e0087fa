"""Snakemake and DVC must describe the same pipeline."""

import re
import subprocess
import sys

import yaml

from hkd.config import load_config
from hkd.pipeline import STAGES, run_paths, shard_count


def snakemake_dag(repo, configfile):
    """{rule: {"outputs": set, "inputs": set}} from a forced Snakemake dry run."""
    r = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--forceall", "--cores", "1",
                        "--configfile", configfile], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dag, current = {}, None
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            current = dag.setdefault(m.group(1), {"outputs": set(), "inputs": set()})
            continue
        m = re.match(r"^    (input|output): (.*)$", line)
        if m and current is not None:
            key = "inputs" if m.group(1) == "input" else "outputs"
            current[key].update(x.strip() for x in m.group(2).split(","))
    return dag


def dvc_dag(repo):
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    dag = {}
    for name, st in stages.items():
        outs = {o if isinstance(o, str) else next(iter(o)) for o in st["outs"]}
        dag[name] = {"outputs": outs, "deps": set(st["deps"]), "cmd": st["cmd"]}
    return dag


def test_dvc_yaml_is_generated_from_pipeline(repo):
    r = subprocess.run([sys.executable, "-m", "hkd", "dvc-yaml", "--config", "configs/default.yaml",
                        "--check"], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_snakemake_and_dvc_agree(repo):
    """Same stages, files and dependencies. Snakemake runs trajectories as one job per shard
    plus a manifest job; DVC as one stage whose output is the trajectories folder."""
    cfg = load_config(repo / "configs" / "default.yaml")
    paths = run_paths(cfg)
    traj_dir = paths["trajectories_dir"]
    produced = set(paths.values())

    def norm(files):
        return {traj_dir if f.startswith(traj_dir + "/") else f for f in files}

    smk = snakemake_dag(repo, "configs/default.yaml")
    shard_rule = smk.pop("trajectory_shard")
    assert len(shard_rule["outputs"]) == shard_count(cfg) and norm(shard_rule["outputs"]) == {traj_dir}
    assert shard_rule["inputs"] == {paths["teacher"]}
    smk["trajectories"]["inputs"] -= shard_rule["outputs"]
    dvc = dvc_dag(repo)
    assert set(smk) - {"all"} == set(dvc) == {s.name for s in STAGES}
    for name, st in dvc.items():
        assert norm(smk[name]["outputs"]) == st["outputs"], name
        data_deps = {d for d in st["deps"] if d in produced}
        assert norm(smk[name]["inputs"]) == data_deps, name
        assert "--config configs/default.yaml" in st["cmd"]
    for name, st in dvc.items():  # every dependency is a file, a stage output or code
        for d in st["deps"]:
            assert d in produced or (repo / d).exists(), f"{name}: unknown dependency {d}"


def test_paper_configs_plan_the_sharded_dag(repo, tmp_path):
    """`snakemake -n all` plans every paper config: one job per trajectory shard, no digit
    classifier, no data stage before an imported EDM teacher."""
    from conftest import copy_workflow

    work = copy_workflow(tmp_path)
    for name, shards in (("cifar10", 10), ("cifar10_cond", 10), ("ffhq64", 20)):
        cfg = load_config(repo / "configs" / f"{name}.yaml")
        assert shard_count(cfg) == shards
        dag = snakemake_dag(work, f"configs/{name}.yaml")
        assert "classifier" not in dag and len(dag["trajectory_shard"]["outputs"]) == shards, name
        assert dag["teacher"]["inputs"] == set(), name
        assert dag["hkd_train"]["inputs"] == {run_paths(cfg)["teacher"], run_paths(cfg)["trajectories"]}
