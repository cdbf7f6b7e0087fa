"""The pipeline's single source of truth: stages, the files they read and write, and
the config sections they depend on.

Snakemake rules (``workflow/rules/*.smk``), the ``hkd`` stage commands and the
generated ``dvc.yaml`` all take their paths from here. Kept free of torch so that
Snakemake starts quickly.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from hkd.config import SOURCE_CLASSES, ConfigError, is_url
from hkd.stage_code import PIPELINE_FILE, stage_code

#: the paper's Table 3 ablations: the ``hkd:`` keys each one changes (the full model is the
#: run's own HKD). Table 3 rows are (Koopman evolution / trajectory-consistency / hierarchy).
ABLATIONS = {
    # no/no/yes: the same encoder-decoder mapping x_T straight to x_eps (one-step distillation)
    "no_koopman": {"koopman": False, "time_points": 0},
    # yes/no/yes: Koopman evolution, trained at t = T only
    "no_trajectory": {"time_points": 0},
    # yes/yes/no: only the bottleneck evolves; skips pass unevolved
    "no_hierarchy": {"hierarchy": False},
    # a control, not the paper's: no Koopman evolution, trained at the same times as the full
    # model, so that the operators are the only difference (no_koopman also drops the times)
    "no_koopman_times": {"koopman": False},
}
#: ablations that are controls of this suite, not rows of the paper's Table 3: shown beside
#: it, compared with the full model, but not part of the paper's ordering claim
CONTROL_ABLATIONS = ("no_koopman_times",)
#: the paper's Table 3 ablations
PAPER_ABLATIONS = tuple(a for a in ABLATIONS if a not in CONTROL_ABLATIONS)


#: the optimisation levers of HKD training (``hkd:`` keys) at the paper's literal reading;
#: the study (config section ``study``) trains each one alone on top of this recipe
PAPER_LEVERS = {
    "koopman_time_unit": 1.0,
    "decoder": "paper",
    "time_sampling": "uniform_sigma",
    "distance": "mse",
    "pseudo_huber_c": None,
    "trajectory_weight": 1.0,
    "operator_param": "linear",
    "operator_init": "zero",
    "operator_lr": None,
    "network_sigma": "input",
    "prediction_weight": 0.0,
}
#: the full model's name among the study's models (the others are ABLATIONS keys)
FULL = "full"
#: study variants: study-<recipe>-<model>-seed<N>; ``paper`` is the recipe of PAPER_LEVERS alone
STUDY_PREFIX, PAPER_RECIPE = "study", "paper"
#: the study's name of the run's own recipe (its hkd: settings)
ADOPTED_RECIPE = "adopted"
_VARIANT = re.compile(
    rf"^(?:{STUDY_PREFIX}-(?P<recipe>[a-z0-9_]+)-)?(?P<model>{FULL}|"
    + "|".join(ABLATIONS)
    + r")?(?:-?seed(?P<seed>\d+))?$"
)


#: tiers over a run, by name: a tier's config extends the run's (``extends:``), keeps its run
#: folder (so the teacher, trajectories, classifier and the run's own trainings are shared) and
#: sets ``tier: <name>``. Its rules and DVC stages, ``<name>_*``, train the variants the run
#: lacks and remake TIER_STAGES under results/<run>/<name>/ and its own report_dir.
TIER_CONFIGS = {"claims": "configs/claims.yaml"}
#: the config Snakemake runs without --configfile
DEFAULT_CONFIG = "configs/default.yaml"
#: the stages a tier remakes from every training, the run's and its own
TIER_STAGES = ("stability", "recipe_controls", "study", "report")
#: run_paths keys a tier writes under results/<run>/<tier>/ instead of results/<run>/
TIER_KEYS = (
    "budget_curves",
    "budget_curve_table",
    "stability",
    "study",
    "recipe_controls",
    "stability_samples",
    "loss_curve",
    "summary",
    "timings",
    "run_config",
)


def extended_file(config_file: str | Path) -> Path | None:
    """The file a config names in ``extends:`` (resolved), or None."""
    config_file = Path(config_file)
    raw = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    if not isinstance(raw, dict) or "extends" not in raw:
        return None
    return (config_file.parent / str(raw["extends"])).resolve()


def tier_files(config_file: str | Path, basedir: str | Path = ".") -> dict[str, Path]:
    """The tiers over a config file: {name: file} of the TIER_CONFIGS that extend it."""
    target = Path(config_file).resolve()
    found = {name: Path(basedir) / f for name, f in TIER_CONFIGS.items()}
    return {name: f for name, f in found.items() if extended_file(f) == target}


def check_tier(tier_cfg: dict, run_cfg: dict, source: str) -> None:
    """A tier shares its run's folder but not its report or aggregates."""
    if tier_cfg.get("tier") is None or tier_cfg["run"] != run_cfg["run"]:
        raise ConfigError(f"{source}: a tier sets 'tier' and keeps the run of the config it extends")
    if Path(tier_cfg["report_dir"]) == Path(run_cfg["report_dir"]):
        raise ConfigError(f"{source}: key 'report_dir': a tier's report goes to a folder of its own")


def seed_variants(cfg: dict) -> list[str]:
    """The extra HKD trainings of Table 5 (training stability): ``seed<N>`` for each of
    ``stability.seeds``; the run's own HKD is the run with the config's ``seed``."""
    return [f"seed{n}" for n in cfg["stability"]["seeds"]]


def ablation_variants(cfg: dict) -> list[str]:
    """Table 3: each of ``ablations`` with the run's seed, then with each ``ablation_seeds``."""
    return list(cfg["ablations"]) + [f"{a}-seed{n}" for a in cfg["ablations"] for n in cfg["ablation_seeds"]]


def curve_variants(cfg: dict) -> list[str]:
    """The variant trainings whose snapshots the stability stage scores: the Table 5 seeds,
    and with ``stability.ablation_curves`` every Table 3 ablation training (budget curves)."""
    ablations = ablation_variants(cfg) if cfg["stability"]["ablation_curves"] else []
    return seed_variants(cfg) + ablations


def effective_hkd(hkd: dict) -> dict:
    """The ``hkd:`` keys a training actually uses: without Koopman evolution neither the clock
    nor how the operators are stored, start and learn matter, without trajectory times neither how they are drawn nor their weight, and
    the pseudo-Huber constant only for that distance."""
    out = dict(hkd)
    if not out["koopman"]:
        for key in ("koopman_time_unit", "operator_param", "operator_init", "operator_lr"):
            out.pop(key)
    if out["time_points"] == 0:
        out.pop("time_sampling"), out.pop("trajectory_weight")
    if out["distance"] != "pseudo_huber":
        out.pop("pseudo_huber_c")
    return out


def recipe_base(cfg: dict) -> dict:
    """The levers a lever recipe is laid over (``study.base``): the paper's reading of every
    one, or the run's own (adopted) ``hkd:`` settings."""
    return PAPER_LEVERS if cfg["study"]["base"] == PAPER_RECIPE else {}


def recipe_hkd(cfg: dict, recipe: str | None, model: str) -> dict:
    """The ``hkd:`` section of one study recipe and model: the run's settings, with every lever
    at the paper's reading for the paper-literal recipe, else the recipe's keys over
    ``recipe_base`` (recipe None: the base alone), then the ablation's switches."""
    if recipe == PAPER_RECIPE:
        return {**cfg["hkd"], **PAPER_LEVERS, **ABLATIONS.get(model, {})}
    overrides = cfg["study"]["recipes"][recipe] if recipe else {}
    return {**cfg["hkd"], **recipe_base(cfg), **overrides, **ABLATIONS.get(model, {})}


def study_variants(cfg: dict) -> list[str]:
    """The study's trainings: the paper-literal recipe for every model and ``study.seeds``;
    each lever recipe for every model it changes against its base (by ``effective_hkd``),
    with the first seed (screening), or with every seed when ``study.confirmed`` names it."""
    st = cfg["study"]
    if not st["recipes"]:
        return []
    out = [f"{STUDY_PREFIX}-{PAPER_RECIPE}-{m}-seed{n}" for m in st["models"] for n in st["seeds"]]
    for recipe in st["recipes"]:
        seeds = st["seeds"] if recipe in st["confirmed"] else st["seeds"][:1]
        for m in st["models"]:
            if effective_hkd(recipe_hkd(cfg, recipe, m)) != effective_hkd(recipe_hkd(cfg, None, m)):
                out += [f"{STUDY_PREFIX}-{recipe}-{m}-seed{n}" for n in seeds]
    return out


def run_variants(cfg: dict) -> list[str]:
    """Every HKD training besides the run's own: the Table 3 ablations (with their extra
    seeds), the Table 5 seeds, then the study's trainings."""
    return ablation_variants(cfg) + seed_variants(cfg) + study_variants(cfg)


def own_variants(cfg: dict, run_cfg: dict | None = None) -> list[str]:
    """The variants whose trainings a config's rules make: all of ``run_variants``, or for a
    tier (``run_cfg``: the config it extends) those the run does not train itself."""
    ours = run_variants(cfg)
    return ours if run_cfg is None else [v for v in ours if v not in run_variants(run_cfg)]


def tier_owns(cfg: dict, run_cfg: dict | None, name: str) -> bool:
    """Whether a config's rules make a stage: a run's (``run_cfg`` None) every enabled one; a
    tier's the per-variant ones where it adds trainings, and TIER_STAGES."""
    if run_cfg is None:
        return stage_enabled(cfg, name)
    if STAGE_BY_NAME[name].per_variant:
        return bool(own_variants(cfg, run_cfg))
    return name in TIER_STAGES and stage_enabled(cfg, name)


def parse_variant(cfg: dict, variant: str) -> dict:
    """{recipe (None = the run's own hkd: settings), model, seed} of a variant name."""
    m = _VARIANT.match(variant)
    recipe = m and m["recipe"]
    if (
        not m
        or (m["model"] is None and m["seed"] is None)
        or (recipe and (recipe != PAPER_RECIPE and recipe not in cfg["study"]["recipes"] or not m["model"]))
        or (not recipe and m["model"] == FULL)
    ):  # the run's own HKD is no variant; its seeds are seed<N>
        raise ValueError(
            f"unknown variant {variant!r}: one of {sorted(ABLATIONS)} (optionally -seed<N>), seed<N>, "
            f"or {STUDY_PREFIX}-<recipe>-<model>-seed<N> with a recipe of study.recipes or "
            f"{PAPER_RECIPE!r}"
        )
    return {
        "recipe": recipe,
        "model": m["model"] or FULL,
        "seed": int(m["seed"]) if m["seed"] is not None else cfg["seed"],
    }


def variant_config(cfg: dict, variant: str) -> dict:
    """The run's config for one variant: a Table 3 ablation changes its ``hkd:`` keys, a
    seed suffix the seed of HKD's initialisation and minibatches, a study recipe the levers
    (``recipe_hkd``); the teacher and the trajectories are always the run's."""
    v = parse_variant(cfg, variant)
    out = copy.deepcopy(cfg)
    out["seed"] = v["seed"]
    if v["recipe"] is not None:
        out["hkd"] = recipe_hkd(cfg, v["recipe"], v["model"])
    else:
        out["hkd"].update(ABLATIONS.get(v["model"], {}))
    return out


def parallel_jobs(cfg: dict, stage: str) -> int:
    """How many jobs of a stage's kind the DAG of ``cfg`` can run at the same time: the run's
    and its companion's, one per trajectory shard, and the HKD trainings (the run's own and
    every variant) as one kind, as are the one-step evaluations. Rules split the cores among
    them (``job_threads``): two 1-thread trainings side by side outran one 2-thread training
    on 2 cores (docs/time-and-cost.md: threads)."""
    runs = [c for _, c, _ in dag_runs(cfg)]
    if stage == "trajectories":
        return sum(shard_count(c) for c in runs)
    if stage in ("hkd_train", "variant_train"):
        return sum(1 + len(run_variants(c)) for c in runs)
    if stage in ("evaluate", "variant_evaluate", "stability"):
        return len(runs) + len(run_variants(cfg)) + 1
    return len(runs)


def job_threads(cfg: dict, stage: str, cores: int) -> int:
    """Threads of one job of ``stage`` when Snakemake has ``cores``: an equal share among the
    jobs of its kind that can run at once (at least 1)."""
    return max(1, cores // parallel_jobs(cfg, stage))


#: Snakemake priorities (among the jobs ready at once, the higher first), by (stage, whether
#: the job is the class-conditional companion's): on few cores the order decides the wall
#: time. The run's trajectories head the longest chains (its teacher samples, training,
#: evaluation, stability, report), the companion's trajectories and training the next. Without
#: them Snakemake ran the companion's whole chain first and started the run's trajectories
#: 14 minutes into a 2-core `all`.
RULE_PRIORITIES = {
    ("trajectories", False): 9,
    ("teacher_sample", False): 8,
    ("trajectories", True): 7,
    ("hkd_train", False): 6,
    ("hkd_train", True): 5,
    ("variant_train", False): 4,
    ("classifier", False): 3,
    ("sample", False): 3,
    ("teacher_sample", True): 2,
    ("evaluate", False): 2,
    ("variant_evaluate", False): 1,
    ("stability", False): 1,
    ("recipe_controls", False): 1,
}


def rule_priority(stage: str, companion: bool = False) -> int:
    """The Snakemake ``priority:`` of a stage's rule (RULE_PRIORITIES; 0 when not listed)."""
    return RULE_PRIORITIES.get((stage, bool(companion)), 0)


#: stages whose jobs share the cores with the others of their kind (``job_threads``); the
#: classifier and the figures take half of them (HALF_CORES); the light stages one
SHARED_CORES = frozenset(
    {
        "teacher",
        "trajectories",
        "hkd_train",
        "variant_train",
        "teacher_sample",
        "sample",
        "evaluate",
        "variant_evaluate",
        "stability",
    }
)
#: short stages that use several threads but never wait for every core: a job asking for all
#: of them starves while 1-thread jobs keep one busy (on 2 cores the classifier, which every
#: evaluation needs, waited 31 minutes for both to be free, one of them idle for 6.5 minutes)
HALF_CORES = frozenset({"classifier", "figures"})


def rule_threads(cfg: dict, stage: str, cores: int) -> int:
    """The threads a stage's rule asks for with ``cores`` (workflow/rules, ``hkd plan``)."""
    if stage in SHARED_CORES:
        return job_threads(cfg, stage, cores)
    return max(1, cores // 2) if stage in HALF_CORES else 1


#: the class-conditional companion of a run (config key ``conditional``, Table 4): rule and DVC
#: stage names start with ``conditional_``, stage commands take ``--conditional``, files go to
#: results/<run>/conditional/
CONDITIONAL = "conditional"


def conditional_config(cfg: dict) -> dict:
    """The companion run of Table 4: the run's settings with a class-conditional network
    (``network.label_dim`` = the data's classes) and nothing but the main row (no
    ablations, stability seeds, snapshots or extra teacher NFEs), ``sample.conditional_count``
    images per row."""
    out = copy.deepcopy(cfg)
    out["run"] = f"{cfg['run']}/{CONDITIONAL}"
    out.pop("tier", None)
    out["network"]["label_dim"] = SOURCE_CLASSES[cfg["data"]["source"]]
    out["conditional"] = False
    teacher = out["teacher"]
    if teacher["source"] == "train" and teacher["conditional_kimg"] is not None:
        teacher["kimg"] = teacher["conditional_kimg"]
    if teacher["source"] == "edm_pickle":
        teacher["path"] = teacher.pop("conditional_path")
        teacher["md5"] = teacher.pop("conditional_md5", None)
    out["ablations"] = []
    out["ablation_seeds"] = []
    out["study"]["recipes"] = {}
    out["stability"]["seeds"] = []
    out["hkd"]["snapshot_epochs"] = []
    out["sample"]["extra_teacher_nfe"] = []
    out["sample"]["count"] = cfg["sample"]["conditional_count"] or cfg["sample"]["count"]
    return out


def dag_runs(cfg: dict) -> list[tuple[str, dict, str]]:
    """(rule-name prefix, config, extra stage-command flag) of every run in the DAG: the run
    itself and, with ``conditional: true``, its class-conditional companion."""
    runs = [("", cfg, "")]
    if cfg["conditional"]:
        runs.append((f"{CONDITIONAL}_", conditional_config(cfg), f" --{CONDITIONAL}"))
    return runs


#: the companion's files that the run's report reads, as ``conditional_<key>`` in run_paths
_CONDITIONAL_KEYS = ("metrics", "samples_teacher", "samples_hkd", "timings")


def run_paths(cfg: dict) -> dict[str, str]:
    """Every file of a run, by name. A companion run (``<run>/conditional``) reads its
    parent's data and digit classifier."""
    root = Path("results") / cfg["run"]
    shared = Path("results") / cfg["run"].split("/")[0]
    report = Path(cfg["report_dir"])
    p = {
        "data": shared / "data" / "images.npz",
        "data_manifest": shared / "data" / "manifest.json",
        "classifier": shared / "classifier" / "classifier.pt",
        "teacher": root / "teacher" / "teacher.pt",
        # a companion's teacher with teacher.conditional_start: unconditional starts from this one
        "init_teacher": shared / "teacher" / "teacher.pt",
        "teacher_tb": root / "teacher" / "tensorboard",
        # training state for resuming (not a declared output, like hkd_resume below)
        "teacher_resume": root / "teacher" / "resume.pt",
        "trajectories_dir": root / "trajectories",
        "trajectories": root / "trajectories" / "manifest.json",
        "hkd": root / "hkd" / "hkd.pt",
        "hkd_tb": root / "hkd" / "tensorboard",
        # training state for resuming; deliberately not a declared output (Snakemake deletes
        # the outputs of a killed job, DVC those of a rerun stage)
        "hkd_resume": root / "hkd" / "resume.pt",
        # weights at the end of each epoch of hkd.snapshot_epochs ({epoch}), for Table 5
        "hkd_snapshots": root / "hkd" / "snapshots" / "epoch-{epoch}.pt",
        "samples_teacher": root / "samples" / "teacher.npz",
        "samples_hkd": root / "samples" / "hkd.npz",
        # the teacher at each NFE of sample.extra_teacher_nfe ({nfe})
        "samples_teacher_nfe": root / "samples" / "teacher_nfe{nfe}.npz",
        "metrics": root / "eval" / "metrics.json",
        # other HKD trainings, one folder per variant ({variant}: a Table 3 ablation, a key of
        # ABLATIONS, or a Table 5 run seed<N>)
        "variant_hkd": root / "variants" / "{variant}" / "hkd.pt",
        "variant_tb": root / "variants" / "{variant}" / "tensorboard",
        "variant_resume": root / "variants" / "{variant}" / "resume.pt",
        "variant_samples": root / "variants" / "{variant}" / "samples.npz",
        "variant_metrics": root / "variants" / "{variant}" / "metrics.json",
        "variant_snapshots": root / "variants" / "{variant}" / "snapshots" / "epoch-{epoch}.pt",
        # FID against training examples of the full model and each ablation (stability stage)
        "budget_curves": root / "eval" / "budget_curves.png",
        # the same curves as a table (DVC plots: FID mean per model against training examples)
        "budget_curve_table": root / "eval" / "budget_curves.csv",
        "stability": root / "eval" / "stability.json",
        # every trained row as mean and spread over seeds, Table 3's ordering, the optimisation study
        "study": root / "eval" / "study.json",
        # the study's controls from its trained weights: intermediate-time errors, alpha agreement
        "recipe_controls": root / "eval" / "recipe_controls.json",
        # the run's own HKD samples before training and after each snapshot epoch (report grids)
        "stability_samples": root / "eval" / "stability_samples.npz",
        "spectral": root / "analysis" / "spectral.png",
        # Figures 2, 4, 5, 6, the viewer's frames and each figure's numbers and checks
        "figures": root / "analysis" / "figures.json",
        "fig2": root / "analysis" / "figure2_trajectory.png",
        "fig2_consistency": root / "analysis" / "figure2_consistency.png",
        "fig4": root / "analysis" / "figure4_bands.png",
        "fig4_modes": root / "analysis" / "figure4_modes.png",
        "fig4_spectrum": root / "analysis" / "figure4_spectrum.png",
        "fig5": root / "analysis" / "figure5_editing.png",
        "fig6": root / "analysis" / "figure6_inpainting.png",
        "viewer": root / "analysis" / "viewer.npz",
        # the no-Koopman ablation is the suite's one-step distillation (KD) row of Tables 1 and 6
        "kd": root / "variants" / "no_koopman" / "hkd.pt",
        # the run's HKD training loss by step, from its tensorboard events (DVC plots)
        "loss_curve": root / "eval" / "loss.csv",
        # the run's headline numbers under flat keys (DVC metrics)
        "summary": root / "eval" / "summary.json",
        "report": report / "index.html",
        "tables": report / "tables",
        # per-stage wall time, written by `hkd <stage>` for the report's provenance block
        "timings": root / "logs" / "timings",
        # the merged config (--configfile files and --config overrides) Snakemake's jobs read
        "run_config": root / "config.yaml",
    }
    # the run's stage timings, read by a tier's report beside its own
    p["run_timings"] = p["timings"]
    if cfg.get("tier"):
        p.update({k: root / cfg["tier"] / p[k].relative_to(root) for k in TIER_KEYS})
    out = {k: str(v) for k, v in p.items()}
    if "/" not in cfg["run"]:
        companion = run_paths({**cfg, "run": f"{cfg['run']}/{CONDITIONAL}", "tier": None})
        out.update({f"{CONDITIONAL}_{k}": companion[k] for k in _CONDITIONAL_KEYS})
    return out


def variant_paths(cfg: dict, variant: str) -> dict[str, str]:
    """``run_paths`` with the files of ``variant`` filled in."""
    return {k: v.replace("{variant}", variant) for k, v in run_paths(cfg).items()}


def snapshot_paths(cfg: dict, template: str) -> dict[int, str]:
    """{epoch: file} of ``hkd.snapshot_epochs`` for a path with ``{epoch}``."""
    return {e: template.replace("{epoch}", f"{e:04d}") for e in cfg["hkd"]["snapshot_epochs"]}


def _logs(cfg: dict) -> Path:
    return Path("results") / cfg["run"] / (cfg.get("tier") or "") / "logs"


def log_path(cfg: dict, stage: str) -> str:
    """Log of a stage (a tier's under results/<run>/<tier>/logs); ``{variant}`` in ``stage``
    stays a Snakemake wildcard."""
    return str(_logs(cfg) / f"{stage}.log")


def benchmark_path(cfg: dict, stage: str) -> str:
    """Snakemake's benchmark of a stage's job (wall time, max RSS, CPU time: what a cluster
    user sizes resources from); ``{variant}`` / ``{shard}`` stay wildcards."""
    return str(_logs(cfg) / "benchmarks" / f"{stage}.tsv")


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.npz"


def shard_count(cfg: dict) -> int:
    t = cfg["trajectories"]
    return math.ceil(t["count"] / t["shard_size"])


def trajectory_shard_paths(cfg: dict) -> list[str]:
    """The shard files of the trajectories stage, in order (each one Snakemake job)."""
    root = Path(run_paths(cfg)["trajectories_dir"])
    return [str(root / shard_name(k)) for k in range(shard_count(cfg))]


def trajectory_shard_pattern(cfg: dict) -> str:
    """The shard path with the wildcard ``{shard}`` (five digits) for Snakemake."""
    return str(Path(run_paths(cfg)["trajectories_dir"]) / "shard-{shard}.npz")


#: outputs that are folders (Snakemake ``directory()``; DVC caches them like files, so that
#: ``dvc pull`` restores every output of a run)
DIRECTORY_OUTPUTS = frozenset({"teacher_tb", "hkd_tb", "variant_tb", "tables"})


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline. Its source files (DVC ``deps`` besides its inputs) are read
    from the imports of its stage function (``hkd.stage_code``), not declared here."""

    name: str  # Snakemake rule / DVC stage name
    command: str  # ``hkd <command>``
    inputs: tuple[str, ...]  # names from run_paths
    outputs: tuple[str, ...]
    params: tuple[str, ...]  # top-level config sections the stage reads
    per_variant: bool = False  # one job per variant of run_variants (paths carry ``{variant}``)
    conditional: bool = False  # also runs for the class-conditional companion (dag_runs)


#: the figures stage's outputs (run_paths keys)
FIGURES = (
    "figures",
    "fig2",
    "fig2_consistency",
    "fig4",
    "fig4_modes",
    "fig4_spectrum",
    "fig5",
    "fig6",
    "viewer",
)
STAGES: tuple[Stage, ...] = (
    Stage(
        "data",
        "data",
        (),
        ("data", "data_manifest"),
        ("seed", "downloads", "data", "network"),
    ),
    Stage(
        "classifier",
        "classifier",
        ("data",),
        ("classifier",),
        ("seed", "evaluate"),
    ),
    Stage(
        "teacher",
        "teacher",
        ("data", "init_teacher"),
        ("teacher", "teacher_tb"),
        ("seed", "downloads", "device", "precision", "compile", "data", "network", "edm", "teacher"),
        conditional=True,
    ),
    Stage(
        "trajectories",
        "trajectories",
        ("teacher",),
        ("trajectories",),
        ("device", "teacher_precision", "compile", "edm", "trajectories"),
        conditional=True,
    ),
    Stage(
        "hkd_train",
        "hkd-train",
        ("teacher", "trajectories"),
        ("hkd", "hkd_tb", "hkd_snapshots"),
        ("seed", "device", "precision", "compile", "hkd_compile", "edm", "hkd"),
        conditional=True,
    ),
    # the teacher's rows need no HKD training: a job of their own, beside the trainings (it
    # reads the trajectories' endpoints with sample.teacher_seeds: trajectories)
    Stage(
        "teacher_sample",
        "teacher-sample",
        ("teacher", "trajectories"),
        ("samples_teacher", "samples_teacher_nfe"),
        ("device", "teacher_precision", "compile", "edm", "trajectories", "sample"),
        conditional=True,
    ),
    Stage(
        "sample",
        "sample",
        ("hkd",),
        ("samples_hkd",),
        ("device", "precision", "sample"),
        conditional=True,
    ),
    Stage(
        "evaluate",
        "evaluate",
        (
            "data",
            "classifier",
            "teacher",
            "hkd",
            "kd",
            "samples_teacher",
            "samples_hkd",
            "samples_teacher_nfe",
        ),
        ("metrics",),
        ("device", "precision", "teacher_precision", "trajectories", "ablations", "sample", "evaluate"),
        conditional=True,
    ),
    Stage(
        "variant_train",
        "variant-train",
        ("teacher", "trajectories"),
        ("variant_hkd", "variant_tb", "variant_snapshots"),
        ("seed", "device", "precision", "compile", "hkd_compile", "edm", "hkd"),
        per_variant=True,
    ),
    Stage(
        "variant_evaluate",
        "variant-evaluate",
        ("data", "classifier", "variant_hkd"),
        ("variant_samples", "variant_metrics"),
        ("device", "precision", "sample", "evaluate"),
        per_variant=True,
    ),
    Stage(
        "stability",
        "stability",
        (
            "data",
            "classifier",
            "teacher",
            "hkd_snapshots",
            "seed_snapshots",
            "ablation_snapshots",
            # each run's final weights and their scores: its last snapshot is not scored again
            "hkd",
            "metrics",
            "samples_hkd",
            "seed_hkd",
            "seed_metrics",
            "seed_samples",
            "ablation_hkd",
            "ablation_metrics",
            "ablation_samples",
        ),
        ("stability", "stability_samples", "budget_curves", "budget_curve_table"),
        (
            "seed",
            "device",
            "precision",
            "edm",
            "hkd",
            "ablations",
            "ablation_seeds",
            "stability",
            "sample",
            "evaluate",
        ),
    ),
    Stage(
        "recipe_controls",
        "recipe-controls",
        ("teacher", "hkd", "seed_hkd", "study_hkd"),
        ("recipe_controls",),
        ("seed", "device", "precision", "teacher_precision", "edm", "trajectories", "stability", "study"),
    ),
    Stage(
        "study",
        "study",
        ("metrics", "variant_metrics", "recipe_controls"),
        ("study",),
        ("seed", "hkd", "ablations", "ablation_seeds", "stability", "study"),
    ),
    Stage("spectral", "spectral", ("hkd",), ("spectral",), ()),
    Stage(
        "figures",
        "figures",
        ("data", "teacher", "hkd"),
        FIGURES,
        ("seed", "device", "precision", "teacher_precision", "edm", "trajectories", "sample", "analysis"),
    ),
    Stage(
        "report",
        "report",
        (
            "data",
            "data_manifest",
            "classifier",
            "samples_teacher",
            "samples_hkd",
            "samples_teacher_nfe",
            "metrics",
            "spectral",
            "hkd_tb",
        )
        + FIGURES
        + (
            "variant_metrics",
            "variant_samples",
            "stability",
            "stability_samples",
            "study",
            "budget_curves",
            "conditional_metrics",
            "conditional_samples_teacher",
            "conditional_samples_hkd",
        ),
        ("report", "tables", "summary", "loss_curve"),
        (
            "run",
            "report_dir",
            "data",
            "network",
            "trajectories",
            "hkd",
            "ablations",
            "ablation_seeds",
            "stability",
            "study",
            "conditional",
            "sample",
            "evaluate",
            "analysis",
            "report",
        ),
    ),
)

STAGE_BY_NAME = {s.name: s for s in STAGES}


def stage_enabled(cfg: dict, name: str) -> bool:
    """The digit classifier exists only as the embedded default's feature extractor; the
    variant stages only when the config asks for ablations or stability seeds; the
    stability stage only with snapshot epochs."""
    if name == "classifier":
        return cfg["evaluate"]["feature_extractor"] == "digit_classifier"
    if STAGE_BY_NAME[name].per_variant or name == "study":
        return bool(run_variants(cfg))
    if name == "stability":
        return bool(cfg["hkd"]["snapshot_epochs"])
    if name == "recipe_controls":  # the study's controls: only where it has lever recipes
        return bool(cfg["study"]["recipes"]) and stage_enabled(cfg, "study")
    return True


def is_companion(cfg: dict) -> bool:
    """The class-conditional companion's config (run ``<run>/conditional``)."""
    return "/" in cfg["run"]


def starts_from_unconditional(cfg: dict) -> bool:
    """A companion run whose teacher starts from the run's trained unconditional teacher."""
    t = cfg["teacher"]
    return is_companion(cfg) and t["source"] == "train" and t["conditional_start"] == "unconditional"


def _path_enabled(cfg: dict, key: str) -> bool:
    if key == "init_teacher":
        return starts_from_unconditional(cfg)
    if key == "teacher_tb":  # an imported EDM teacher has no training log
        return cfg["teacher"]["source"] == "train"
    if key == "classifier":
        return stage_enabled(cfg, "classifier")
    if key.startswith("variant_"):
        return bool(run_variants(cfg))
    if key == "kd":
        return "no_koopman" in cfg["ablations"]
    if key in ("stability", "stability_samples", "budget_curves"):
        return stage_enabled(cfg, "stability")
    if key == "study":
        return stage_enabled(cfg, "study")
    if key == "recipe_controls":
        return stage_enabled(cfg, "recipe_controls")
    if key.startswith(f"{CONDITIONAL}_"):
        return bool(cfg[CONDITIONAL])
    return True


#: a stage that gathers the files of one group of variants names them ``<group>_<file>``: the
#: ``variant_<file>`` of each variant of the group (``seed_snapshots``: the Table 5 runs' snapshots)
VARIANT_GROUPS = {"seed": seed_variants, "ablation": ablation_variants, "study": study_variants}


def _template(cfg: dict, key: str) -> tuple[str, object]:
    """(path template of a stage file key, the variant group it gathers or None)."""
    group, sep, file = key.partition("_")
    if sep and group in VARIANT_GROUPS:
        return run_paths(cfg)[f"variant_{file}"], VARIANT_GROUPS[group]
    return run_paths(cfg)[key], None


def _resolve(cfg: dict, name: str, key: str, variant: str | None):
    """A stage's file or files. ``{nfe}`` and ``{epoch}`` expand to the configured extra
    teacher NFEs and snapshot epochs (a list); ``{variant}`` is filled in for one variant
    (``variant``), left as a wildcard for per-variant stages, or expanded to every variant
    for a stage that gathers them (only those of its group for a ``VARIANT_GROUPS`` key)."""
    template, group = _template(cfg, key)
    paths, listed = [template], False
    if "{nfe}" in template:
        paths, listed = (
            [p.replace("{nfe}", str(n)) for p in paths for n in cfg["sample"]["extra_teacher_nfe"]],
            True,
        )
    if "{epoch}" in template:
        paths, listed = [f for p in paths for f in snapshot_paths(cfg, p).values()], True
    if "{variant}" in template:
        if variant is not None:
            paths = [p.replace("{variant}", variant) for p in paths]
        elif not STAGE_BY_NAME[name].per_variant:
            variants = (group or run_variants)(cfg)
            paths, listed = [p.replace("{variant}", v) for v in variants for p in paths], True
    return paths if listed else paths[0]


def stage_inputs(cfg: dict, name: str, variant: str | None = None) -> dict:
    keys = STAGE_BY_NAME[name].inputs
    if name == "teacher" and cfg["teacher"]["source"] != "train":
        # an imported EDM network needs no dataset; a local pickle (resources/) is its input
        path = cfg["teacher"]["path"]
        return {} if is_url(path) else {"edm_pickle": path}
    if name == "teacher_sample" and cfg["sample"]["teacher_seeds"] != "trajectories":
        keys = tuple(k for k in keys if k != "trajectories")  # reads the endpoints only then
    out = {k: _resolve(cfg, name, k, variant) for k in keys if _path_enabled(cfg, k)}
    return {k: v for k, v in out.items() if v != []}


def stage_outputs(cfg: dict, name: str, variant: str | None = None) -> dict:
    out = {k: _resolve(cfg, name, k, variant) for k in STAGE_BY_NAME[name].outputs if _path_enabled(cfg, k)}
    return {k: v for k, v in out.items() if v != []}


def stage_params(cfg: dict, name: str) -> dict:
    """The config sections whose change reruns the stage (Snakemake ``params``)."""
    return {k: _param_value(cfg, k) for k in _param_keys(cfg, name)}


def _param_keys(cfg: dict, name: str) -> tuple[str, ...]:
    keys = STAGE_BY_NAME[name].params
    if name == "teacher" and cfg["teacher"]["source"] != "train":
        # an imported network depends on the file and on the architecture the config states,
        # not on the seed, precision or which images the data stage reads
        keys = ("downloads", "data.source", "data.resolution", "network", "teacher")
    if name == "teacher" and "/" not in cfg["run"]:
        # how the companion's teacher starts, trains or is imported does not change the run's own
        own = tuple(f"teacher.{k}" for k in cfg["teacher"] if not k.startswith("conditional_"))
        keys = tuple(k for k in keys if k != "teacher") + own
    return keys


def _param_value(cfg: dict, key: str):
    value = cfg
    for part in key.split("."):
        value = value[part]
    return value


#: outputs DVC keeps in git instead of its cache (``cache: false``): the run's metrics, and
#: the tables its plots are drawn from
DVC_METRICS, DVC_PLOTS = ("summary",), ("budget_curve_table", "loss_curve")


def _dvc_outs(paths: dict, outs: list) -> dict:
    """A stage's outputs as dvc.yaml declares them: ``outs``, ``metrics`` and ``plots``."""
    kinds = {paths[k]: "metrics" for k in DVC_METRICS} | {paths[k]: "plots" for k in DVC_PLOTS}
    out = {"outs": []}
    for o in outs:
        kind = kinds.get(o) if isinstance(o, str) else None
        out.setdefault(kind or "outs", []).append({o: {"cache": False}} if kind else o)
    return out


def dvc_plots(cfg: dict) -> list:
    """dvc.yaml's top-level plots: the HKD training loss and the budget curves (FID of the
    full model and each ablation against training examples; epoch -1 = before training)."""
    paths = run_paths(cfg)
    plots = [
        {
            paths["loss_curve"]: {
                "x": "step",
                "y": ["loss_total"],
                "title": "HKD training loss",
                "x_label": "step",
                "y_label": "loss",
            }
        }
    ]
    if stage_enabled(cfg, "stability"):
        plots.append(
            {
                paths["budget_curve_table"]: {
                    "x": "examples",
                    "y": [FULL, *cfg["ablations"]],
                    "title": "FID (one step) against training examples",
                    "x_label": "training examples",
                    "y_label": "FID",
                }
            }
        )
    return plots


def _dvc_stage(
    run_cfg: dict, paths: dict, st: Stage, variant: str | None, cmd_tail: str, params: list, derived: bool
) -> dict:
    """One dvc.yaml stage: ``hkd <command> --config ...`` with its deps, params and outs;
    ``paths``: ``run_paths(run_cfg)``; ``derived``: its config is computed here (the
    companion's, a tier's own variants)."""
    # DVC sees the trajectories folder (shards + manifest) as one output, kept between runs
    # (persist) so an interrupted stage resumes from its finished shards.
    as_dvc = {"trajectories": paths["trajectories_dir"]}
    outs = []
    for k, path in stage_outputs(run_cfg, st.name, variant).items():
        for p in path if isinstance(path, list) else [path]:
            outs.append({as_dvc[k]: {"persist": True}} if k == "trajectories" else p)
    deps = []
    for k, path in stage_inputs(run_cfg, st.name, variant).items():
        deps += [as_dvc.get(k, p) for p in (path if isinstance(path, list) else [path])]
    code = stage_code(st.command)
    if derived and PIPELINE_FILE not in code:
        code = tuple(sorted(code + (PIPELINE_FILE,)))
    entry = {
        "cmd": f"hkd {st.command} {cmd_tail}" + (f" --variant {variant}" if variant else ""),
        "deps": deps + list(code),
    }
    if params:
        entry["params"] = copy.deepcopy(params)  # one list per stage: no YAML anchors
    entry.update(_dvc_outs(paths, outs))
    return entry


def _stage_names(st: Stage, variants: list[str]) -> list[tuple[str, str | None]]:
    return [(f"{st.name}_{v}", v) for v in variants] if st.per_variant else [(st.name, None)]


def _tier_params(keys: tuple[str, ...], config_file: str, tier_file: Path, tier_keys: set) -> list:
    """A tier stage's params: its keys in the run's config and those the tier's file sets
    (``tier_keys``: DVC reads each file as it is, without ``extends``)."""
    own = [k for k in keys if k.split(".")[0] in tier_keys]
    return [{config_file: list(keys)}] + ([{str(tier_file): own}] if own else [])


def dvc_stages(cfg: dict, config_file: str) -> dict:
    """dvc.yaml for one config file: its ``stages:`` (the conditional companion's stages
    named ``conditional_<stage>``) and ``plots:``."""
    stages = {}
    for prefix, run_cfg, flag in dag_runs(cfg):
        paths = run_paths(run_cfg)
        for st in STAGES:
            if (prefix and not st.conditional) or not stage_enabled(run_cfg, st.name):
                continue
            keys = _param_keys(run_cfg, st.name) + ((CONDITIONAL,) if prefix else ())
            params = [{config_file: list(keys)}] if keys else []
            for name, variant in _stage_names(st, run_variants(run_cfg)):
                stages[prefix + name] = _dvc_stage(
                    run_cfg, paths, st, variant, f"--config {config_file}{flag}", params, bool(prefix)
                )
    return {"stages": stages, "plots": dvc_plots(cfg)}


def dvc_tier_stages(cfg: dict, config_file: str) -> dict[str, dict]:
    """{tier: its dvc.yaml} for each tier over ``config_file``: a file of its own,
    ``<tier>/dvc.yaml`` (so that ``dvc repro`` stays the run's and ``dvc repro
    claims/dvc.yaml`` runs the tier), whose stages run from the repository root (``wdir``)."""
    from hkd.config import load_config

    out = {}
    for tier, tier_file in tier_files(config_file).items():
        tier_cfg = load_config(tier_file)
        check_tier(tier_cfg, cfg, str(tier_file))
        paths, tier_keys = run_paths(tier_cfg), set(yaml.safe_load(tier_file.read_text()))
        variants, stages = own_variants(tier_cfg, cfg), {}
        for st in (st for st in STAGES if tier_owns(tier_cfg, cfg, st.name)):
            params = _tier_params(_param_keys(tier_cfg, st.name), config_file, tier_file, tier_keys)
            for name, variant in _stage_names(st, variants):
                entry = _dvc_stage(tier_cfg, paths, st, variant, f"--config {tier_file}", params, True)
                stages[f"{tier}_{name}"] = {"wdir": "..", **entry}
        # top-level plots are read relative to the dvc.yaml's folder
        plots = [{f"../{path}": spec for path, spec in pl.items()} for pl in dvc_plots(tier_cfg)]
        out[tier] = {"stages": stages, "plots": plots}
    return out
