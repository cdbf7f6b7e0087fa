"""Snakemake and DVC must describe the same pipeline."""

import copy
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import copy_workflow, shipped_files

from hkd.config import load_config
from hkd.pipeline import (
    ABLATIONS,
    PAPER_LEVERS,
    STAGES,
    conditional_config,
    curve_variants,
    dag_runs,
    own_variants,
    run_paths,
    run_variants,
    shard_count,
    stage_enabled,
    stage_inputs,
    stage_outputs,
    tier_owns,
    variant_config,
)


def snakemake_dag(work, configfile, *targets):
    """{rule: {"outputs": set, "inputs": set, "shell": set}} from a forced Snakemake dry run
    in ``work`` (a copy of the workflow; ``shell``: the stage commands the jobs would run)."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "-p",
            "--forceall",
            "--cores",
            "1",
            *targets,
            "--configfile",
            configfile,
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    dag, current = {}, None
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", line)
        if m:
            current = dag.setdefault(m.group(1), {"outputs": set(), "inputs": set(), "shell": set()})
            continue
        m = re.match(r"^Shell command: .* -m hkd (.*?) --threads", line)
        if m and current is not None:
            current["shell"].add(re.sub(r"--config \S+", "--config X", m.group(1)))
        m = re.match(r"^    (input|output): (.*)$", line)
        if m and current is not None:
            key = "inputs" if m.group(1) == "input" else "outputs"
            current[key].update(x.strip() for x in m.group(2).split(","))
    return dag


def dvc_dag(repo):
    """{stage: {"outputs", "deps", "cmds"}}, the per-ablation stages (``<stage>_<variant>``)
    merged under their stage name as Snakemake's dry run merges the jobs of one rule."""
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    tier_stages = yaml.safe_load((repo / "claims" / "dvc.yaml").read_text())["stages"]
    assert all(st.pop("wdir") == ".." for st in tier_stages.values())  # run from the repository root
    stages |= tier_stages
    cfg = load_config(repo / "configs" / "default.yaml")
    claims = load_config(repo / "configs" / "claims.yaml")
    per_variant = {f"{s.name}_{v}": s.name for s in STAGES if s.per_variant for v in run_variants(cfg)}
    per_variant |= {
        f"claims_{s.name}_{v}": f"claims_{s.name}"
        for s in STAGES
        if s.per_variant
        for v in own_variants(claims, cfg)
    }
    dag = {}
    for name, st in stages.items():
        entry = dag.setdefault(per_variant.get(name, name), {"outputs": set(), "deps": set(), "cmds": []})
        outs = st["outs"] + st.get("metrics", []) + st.get("plots", [])
        entry["outputs"] |= {o if isinstance(o, str) else next(iter(o)) for o in outs}
        entry["deps"] |= set(st["deps"])
        entry["cmds"].append(st["cmd"])
    return dag


def test_dvc_declares_metrics_and_plots(repo, tmp_path):
    """The run's summary is DVC's metrics file and the budget-curve table its plot, both kept
    in git (cache: false; .gitignore lets them through) so other revisions can be compared."""
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())
    paths = run_paths(load_config(repo / "configs" / "default.yaml"))
    assert dvc["stages"]["report"]["metrics"] == [{paths["summary"]: {"cache": False}}]
    assert dvc["stages"]["stability"]["plots"] == [{paths["budget_curve_table"]: {"cache": False}}]
    assert dvc["stages"]["report"]["plots"] == [{paths["loss_curve"]: {"cache": False}}]
    loss, budget = dvc["plots"]
    assert loss[paths["loss_curve"]]["y"] == ["loss_total"]
    assert budget[paths["budget_curve_table"]]["y"] == ["full", "no_koopman", "no_trajectory", "no_hierarchy"]
    # the claims tier's own summary and budget curves (over >= 3 seeds), in claims/dvc.yaml
    claims = run_paths(load_config(repo / "configs" / "claims.yaml"))
    tier = yaml.safe_load((repo / "claims" / "dvc.yaml").read_text())
    assert tier["stages"]["claims_report"]["metrics"] == [{claims["summary"]: {"cache": False}}]
    assert claims["summary"] != paths["summary"]
    assert [next(iter(pl)) for pl in tier["plots"]] == [
        f"../{claims['loss_curve']}",
        f"../{claims['budget_curve_table']}",
    ]
    # the checkout's .gitignore in a repository of its own: the answer depends on that file alone
    shutil.copy2(repo / ".gitignore", tmp_path / ".gitignore")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    ignored = subprocess.run(
        [
            "git",
            "check-ignore",
            "--no-index",
            paths["summary"],
            paths["budget_curve_table"],
            paths["loss_curve"],
            paths["metrics"],
            claims["summary"],
            claims["budget_curve_table"],
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert ignored == [paths["metrics"]]


def test_dvc_yaml_is_generated_from_pipeline(tmp_path):
    """dvc.yaml and the claims tier's claims/dvc.yaml are what `hkd dvc-yaml` writes."""
    work = copy_workflow(tmp_path)
    check = [sys.executable, "-m", "hkd", "dvc-yaml", "--config", "configs/default.yaml", "--check"]
    r = subprocess.run(check, cwd=work, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (work / "claims" / "dvc.yaml").unlink()
    r = subprocess.run(check, cwd=work, capture_output=True, text=True)
    assert r.returncode == 1 and "claims/dvc.yaml is out of date" in r.stderr


def test_snakemake_and_dvc_agree(repo, tmp_path):
    """Same stages, files and dependencies, for the run, its class-conditional companion
    (conditional_<stage>) and the claims tier (claims_<stage>). Snakemake runs trajectories as
    one job per shard plus a manifest job; DVC as one stage whose output is the trajectories
    folder."""
    cfg = load_config(repo / "configs" / "default.yaml")
    claims = load_config(repo / "configs" / "claims.yaml")
    runs = dag_runs(cfg)
    assert [prefix for prefix, _, _ in runs] == ["", "conditional_"]
    produced, traj_dirs = set(), set()
    for _, run_cfg, _ in runs + [("claims_", claims, "")]:
        paths = run_paths(run_cfg)
        traj_dirs.add(paths["trajectories_dir"])
        produced |= set(paths.values())
        for st in STAGES:  # every output, per-variant and per-NFE files expanded
            for v in run_variants(run_cfg) if st.per_variant else [None]:
                for path in stage_outputs(run_cfg, st.name, v).values():
                    produced |= set(path if isinstance(path, list) else [path])

    def norm(files):
        return {next((d for d in traj_dirs if f.startswith(d + "/")), f) for f in files}

    # a dry run writes results/<run>/config.yaml (and results/<run>/claims/config.yaml)
    smk = snakemake_dag(copy_workflow(tmp_path), "configs/default.yaml", "all", "claims")
    for prefix, run_cfg, _ in runs:
        paths = run_paths(run_cfg)
        shard_rule = smk.pop(prefix + "trajectory_shard")
        assert len(shard_rule["outputs"]) == shard_count(run_cfg)
        assert norm(shard_rule["outputs"]) == {paths["trajectories_dir"]}
        assert shard_rule["inputs"] == {paths["teacher"]}
        smk[prefix + "trajectories"]["inputs"] -= shard_rule["outputs"]
    dvc = dvc_dag(repo)
    expected = (
        {s.name for s in STAGES if stage_enabled(cfg, s.name)}
        | {f"conditional_{s.name}" for s in STAGES if s.conditional}
        | {f"claims_{s.name}" for s in STAGES if tier_owns(claims, cfg, s.name)}
    )
    assert {"claims_variant_train", "claims_stability", "claims_report"} <= expected
    assert set(smk) - {"all", "claims"} == set(dvc) == expected
    for name, st in dvc.items():
        assert norm(smk[name]["outputs"]) == st["outputs"], name
        data_deps = {d for d in st["deps"] if d in produced or d in shipped_files()}
        assert norm(smk[name]["inputs"]) == data_deps, name
        own_file = "configs/claims.yaml" if name.startswith("claims_") else "configs/default.yaml"
        assert all(f"--config {own_file}" in c for c in st["cmds"]), name
        assert all(c.endswith("--conditional") == name.startswith("conditional_") for c in st["cmds"]), name

        # the command each job runs is the DVC stage's
        def words(cmd):
            return tuple(sorted(cmd.split()))

        assert {words(c.replace("hkd ", "", 1).replace(own_file, "X")) for c in st["cmds"]} == {
            words(c) for c in smk[name]["shell"]
        }, name
    for name, st in dvc.items():  # every dependency is a file, a stage output or code
        for d in st["deps"]:
            assert d in produced or (repo / d).exists(), f"{name}: unknown dependency {d}"


def test_conditional_companion(repo, tmp_path):
    """Table 4's companion: the run's settings with a class-conditional network and only the
    main row, its own teacher, trajectories and HKD under results/<run>/conditional/, the
    run's data and digit classifier; the report reads its metrics."""
    cfg = load_config(repo / "configs" / "default.yaml")
    cond = conditional_config(cfg)
    assert cond["network"]["label_dim"] == 10 and cfg["network"]["label_dim"] == 0
    assert (
        cond["ablations"] == [] and cond["stability"]["seeds"] == [] and cond["hkd"]["snapshot_epochs"] == []
    )
    same = ("seed", "device", "precision", "data", "edm", "trajectories", "evaluate")
    assert all(cond[k] == cfg[k] for k in same)
    # Table 4 on sample.conditional_count images per row; null = the run's count
    assert cond["sample"]["count"] == cfg["sample"]["conditional_count"] != cfg["sample"]["count"]
    unset = copy.deepcopy(cfg)
    unset["sample"]["conditional_count"] = None
    assert conditional_config(unset)["sample"]["count"] == cfg["sample"]["count"]
    teacher = cfg["teacher"]  # the companion imports its own shipped pickle
    assert cond["teacher"] == {
        "source": "edm_pickle",
        "path": teacher["conditional_path"],
        "md5": teacher["conditional_md5"],
        "allow_modified_edm_source": False,
    }
    assert {k: v for k, v in cond["hkd"].items() if k != "snapshot_epochs"} == {
        k: v for k, v in cfg["hkd"].items() if k != "snapshot_epochs"
    }
    main, comp = run_paths(cfg), run_paths(cond)
    for key in ("data", "data_manifest", "classifier"):
        assert comp[key] == main[key]
    for key in ("teacher", "trajectories", "hkd", "samples_hkd", "metrics"):
        assert comp[key].startswith("results/default/conditional/") and comp[key] != main[key]
    assert main["conditional_metrics"] == comp["metrics"]
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert comp["metrics"] in dvc["report"]["deps"]
    own = dvc["teacher"]["params"][0]["configs/default.yaml"]  # the run's teacher: its own teacher keys
    assert dvc["conditional_teacher"]["params"] == [
        {
            "configs/default.yaml": [k for k in own if not k.startswith("teacher.")]
            + ["teacher", "conditional"]
        }
    ]
    off = {**cfg, "conditional": False}
    assert [p for p, _, _ in dag_runs(off)] == [""]
    assert "conditional_metrics" in stage_inputs(cfg, "report") and "conditional_metrics" not in stage_inputs(
        off, "report"
    )
    r = subprocess.run(
        [sys.executable, "-m", "hkd", "teacher", "--config", "configs/cifar10.yaml", "--conditional"],
        cwd=copy_workflow(tmp_path),
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "key 'conditional' is false" in r.stderr


def test_paper_configs_plan_the_sharded_dag(repo, tmp_path):
    """`snakemake -n all` plans every paper config: one job per trajectory shard, no digit
    classifier, no data stage before an imported EDM teacher."""
    work = copy_workflow(tmp_path)
    for name, shards in (("cifar10", 10), ("cifar10_cond", 10), ("ffhq64", 20)):
        cfg = load_config(repo / "configs" / f"{name}.yaml")
        assert shard_count(cfg) == shards
        dag = snakemake_dag(work, f"configs/{name}.yaml")
        assert "classifier" not in dag and len(dag["trajectory_shard"]["outputs"]) == shards, name
        assert dag["teacher"]["inputs"] == set(), name
        assert dag["hkd_train"]["inputs"] == {run_paths(cfg)["teacher"], run_paths(cfg)["trajectories"]}


def test_variant_stages_follow_the_config(repo, tmp_path):
    """Table 3, Table 5 and the study: one training and one evaluation job per listed ablation
    (and its extra seeds), stability seed and study recipe, gathered by the study and report
    stages; none when every list is empty; an ablation changes only its hkd: keys, a seed run
    only the seed, a study run the levers (at the paper's reading, then its recipe's)."""
    default = load_config(repo / "configs" / "default.yaml")
    assert default["ablations"] == ["no_koopman", "no_trajectory", "no_hierarchy"]
    assert run_variants(default) == ["no_koopman", "no_trajectory", "no_hierarchy"]
    cfg = load_config(repo / "configs" / "claims.yaml")  # the default with seeds and the study's recipes
    variants = run_variants(cfg)
    same = ("study", "ablations", "ablation_seeds", "stability", "tier", "report_dir")
    assert {k: v for k, v in cfg.items() if k not in same} == {
        k: v for k, v in default.items() if k not in same
    }
    ablations = ["no_koopman", "no_trajectory", "no_hierarchy", "no_koopman_times"]
    assert variants[:14] == ablations + [f"{a}-seed{n}" for a in ablations for n in (1, 2)] + [
        "seed1",
        "seed2",
    ]
    assert variants[14:17] == [f"study-paper-full-seed{n}" for n in (0, 1, 2)]
    seeds = {r: (0, 1, 2) if r in cfg["study"]["confirmed"] else (0,) for r in cfg["study"]["recipes"]}
    assert cfg["study"]["confirmed"] and set(seeds) > set(cfg["study"]["confirmed"])
    assert variants[17:] == [
        f"study-{r}-full-seed{n}" for r in cfg["study"]["recipes"] for n in seeds[r]
    ]  # screened with one seed, confirmed ones with every seed
    # a lever that a model does not use is not trained for it (the operators without Koopman evolution)
    with_kd = {**cfg, "study": {**cfg["study"], "models": ["full", "no_koopman"]}}
    both = run_variants(with_kd)
    assert "study-ring-full-seed0" in both and "study-ring-no_koopman-seed0" not in both
    assert "study-fixed_sigma-no_koopman-seed0" in both
    last = default["hkd"]["epochs"] - 1
    dvc = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert dvc["variant_train_no_koopman"]["cmd"].endswith("--variant no_koopman")
    assert f"results/default/variants/no_koopman/snapshots/epoch-{last:04d}.pt" in dvc["stability"]["deps"]
    assert not any("seed" in d or "study-" in d for d in dvc["stability"]["deps"])
    assert "results/default/variants/no_hierarchy/metrics.json" in dvc["study"]["deps"]
    assert "results/default/eval/study.json" in dvc["report"]["deps"]
    for variant, keys in ABLATIONS.items():
        for name in (variant, f"{variant}-seed1"):
            changed = variant_config(cfg, name)
            assert {k for k in cfg["hkd"] if changed["hkd"][k] != cfg["hkd"][k]} == set(keys), name
            assert changed["seed"] == (1 if name.endswith("seed1") else cfg["seed"])
        assert {k: v for k, v in changed.items() if k not in ("hkd", "seed")} == {
            k: v for k, v in cfg.items() if k not in ("hkd", "seed")
        }
    assert ABLATIONS["no_koopman"] == {"koopman": False, "time_points": 0}  # the paper's no/no/yes row
    seeded = variant_config(cfg, "seed2")
    assert seeded["seed"] == 2 and {k: v for k, v in seeded.items() if k != "seed"} == {
        k: v for k, v in cfg.items() if k != "seed"
    }
    paper = variant_config(cfg, "study-paper-full-seed1")
    assert paper["seed"] == 1 and {k: paper["hkd"][k] for k in PAPER_LEVERS} == PAPER_LEVERS
    lever = variant_config(with_kd, "study-fixed_sigma-no_koopman-seed0")  # over the adopted recipe
    assert lever["hkd"] == {**cfg["hkd"], "network_sigma": "sigma_max", "koopman": False, "time_points": 0}
    for bad in ("study-unknown-full-seed0", "study-paper-seed0", "no_koopmann", "full"):
        with pytest.raises(ValueError, match="unknown variant"):
            variant_config(cfg, bad)

    work = copy_workflow(tmp_path)
    text = (work / "configs" / "default.yaml").read_text()
    one = text.replace("ablations: [no_koopman, no_trajectory, no_hierarchy]", "ablations: [no_hierarchy]")
    (work / "configs" / "one.yaml").write_text(one)
    dag = snakemake_dag(work, "configs/one.yaml")
    snaps = {
        f"results/default/variants/no_hierarchy/snapshots/epoch-{e:04d}.pt"
        for e in default["hkd"]["snapshot_epochs"]
    }
    assert (
        dag["variant_train"]["outputs"]
        == {
            "results/default/variants/no_hierarchy/hkd.pt",
            "results/default/variants/no_hierarchy/tensorboard",
        }
        | snaps
    )
    assert dag["study"]["inputs"] == {
        "results/default/eval/metrics.json",
        "results/default/variants/no_hierarchy/metrics.json",
    }
    none = text.replace("ablations: [no_koopman, no_trajectory, no_hierarchy]", "ablations: []")
    (work / "configs" / "none.yaml").write_text(none)
    dag = snakemake_dag(work, "configs/none.yaml")
    assert (
        "variant_train" not in dag
        and "variant_evaluate" not in dag
        and "study" not in dag
        and "stability" in dag
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "hkd",
            "variant-train",
            "--config",
            "configs/none.yaml",
            "--variant",
            "no_koopman",
        ],
        cwd=work,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "makes a variant 'no_koopman'" in r.stderr


def test_jobs_that_can_run_together_share_the_cores(repo):
    from hkd.pipeline import job_threads, parallel_jobs, rule_threads

    cfg = load_config(repo / "configs" / "default.yaml")
    trainings = 1 + len(run_variants(cfg)) + 1  # the run's, its variants', the companion's
    assert parallel_jobs(cfg, "hkd_train") == parallel_jobs(cfg, "variant_train") == trainings
    assert job_threads(cfg, "hkd_train", 2) == 1 and job_threads(cfg, "variant_train", 4 * trainings) == 4
    assert job_threads(cfg, "teacher", 16) == 8  # the run's teacher and the conditional one
    alone = {**cfg, "conditional": False, "ablations": [], "ablation_seeds": [], "stability": {"seeds": []}}
    assert job_threads(alone, "teacher", 2) == job_threads(alone, "hkd_train", 2) == 2
    # the classifier and the figures never ask for every core, so they cannot starve behind
    # 1-thread jobs
    assert rule_threads(cfg, "classifier", 2) == rule_threads(cfg, "figures", 2) == 1
    assert rule_threads(cfg, "classifier", 16) == 8


def test_conditional_teacher_can_start_from_the_run_teacher(repo):
    cfg = load_config(repo / "configs" / "mnist_long.yaml")  # a run that trains its teachers
    assert "init_teacher" not in stage_inputs(conditional_config(cfg), "teacher")  # scratch there
    warm = {
        **cfg,
        "teacher": {**cfg["teacher"], "conditional_start": "unconditional", "conditional_kimg": 20},
    }
    companion = conditional_config(warm)
    assert stage_inputs(companion, "teacher")["init_teacher"] == run_paths(cfg)["teacher"]
    assert companion["teacher"]["kimg"] == 20 and "init_teacher" not in stage_inputs(warm, "teacher")
    # the run's own teacher does not rerun when only its companion's start changes
    from hkd.pipeline import stage_params

    assert stage_params(warm, "teacher") == stage_params(cfg, "teacher")


def test_teacher_samples_need_no_hkd_training(repo):
    """The teacher's evaluation rows are a job of their own, which needs no HKD training, so
    it runs beside the trainings (and the trajectories only where its row starts with their
    endpoints); HKD's samples need only its weights."""
    cfg = load_config(repo / "configs" / "default.yaml")
    p = run_paths(cfg)
    assert cfg["sample"]["teacher_seeds"] == "trajectories"
    assert stage_inputs(cfg, "teacher_sample") == {"teacher": p["teacher"], "trajectories": p["trajectories"]}
    cfg["sample"]["teacher_seeds"] = "evaluation"
    assert stage_inputs(cfg, "teacher_sample") == {"teacher": p["teacher"]}
    cfg["sample"]["extra_teacher_nfe"] = []
    assert set(stage_outputs(cfg, "teacher_sample")) == {"samples_teacher"}
    cfg["sample"]["extra_teacher_nfe"] = [15]  # each extra EDM row of Table 1 adds its file
    assert set(stage_outputs(cfg, "teacher_sample")) == {"samples_teacher", "samples_teacher_nfe"}
    assert stage_inputs(cfg, "sample") == {"hkd": p["hkd"]}
    assert set(stage_outputs(cfg, "sample")) == {"samples_hkd"}


def test_stability_scores_ablation_snapshots_only_when_asked(repo):
    """The default scores the full HKD's snapshots (Table 5); ablation_curves adds every Table 3
    ablation training's (budget curves of each model), as the claims tier does."""
    cfg = load_config(repo / "configs" / "default.yaml")
    assert cfg["stability"]["ablation_curves"] is False and curve_variants(cfg) == []
    claims = load_config(repo / "configs" / "claims.yaml")
    seeded = [f"{a}-seed{n}" for a in ABLATIONS for n in (1, 2)]
    assert curve_variants(claims) == ["seed1", "seed2", *ABLATIONS, *seeded]


def test_rule_priorities_start_the_longest_chains_first():
    """On few cores Snakemake starts the ready job of highest priority: the run's trajectories
    before anything of the companion's, and every training before the evaluations it feeds."""
    from hkd.pipeline import RULE_PRIORITIES, STAGE_BY_NAME, rule_priority

    assert all(stage in STAGE_BY_NAME for stage, _ in RULE_PRIORITIES)
    assert rule_priority("trajectories") > rule_priority("trajectories", True) > rule_priority("hkd_train")
    assert rule_priority("hkd_train", True) > rule_priority("variant_train") > rule_priority("evaluate")
    assert rule_priority("variant_evaluate") >= rule_priority("stability") > rule_priority("report") == 0
