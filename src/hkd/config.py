"""Run configuration: YAML file -> validated dict.

The JSON schema (``config.schema.yaml``, also used by Snakemake through
``workflow/schemas/``) rejects unknown keys and wrong types; ``check_config`` adds the
cross-field rules a schema cannot express (seed ranges, split sizes).
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

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
    validator = jsonschema.Draft7Validator(load_schema())
    errors = sorted(validator.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  key '{_where(e)}': {e.message}" for e in errors]
        raise ConfigError(f"{source}: invalid configuration\n" + "\n".join(lines))
    check_config(cfg, source)
    return cfg


def check_config(cfg: dict, source: str = "config") -> None:
    """Rules spanning several keys."""
    data, traj = cfg["data"], cfg["trajectories"]
    if data["count"] > 5000:
        raise ConfigError(f"{source}: key 'data.count': the embedded MNIST source has 5000 images")
    if data["heldout"] >= data["count"]:
        raise ConfigError(f"{source}: key 'data.heldout' must be smaller than 'data.count'")
    train_seeds = (traj["seed_offset"], traj["seed_offset"] + traj["count"])
    eval_seeds = (cfg["sample"]["seed_offset"], cfg["sample"]["seed_offset"] + data["heldout"])
    if train_seeds[0] < eval_seeds[1] and eval_seeds[0] < train_seeds[1]:
        raise ConfigError(
            f"{source}: key 'sample.seed_offset': evaluation seeds {eval_seeds[0]}..{eval_seeds[1] - 1} "
            f"overlap the trajectory seeds {train_seeds[0]}..{train_seeds[1] - 1}")
    net = cfg["network"]
    for mult in net["channel_mult"]:
        if (net["model_channels"] * mult) % 2:
            raise ConfigError(f"{source}: key 'network.model_channels': every level needs an even "
                              "channel count (Koopman 2x2 blocks pair channels)")
    if cfg["edm"]["sigma_min"] >= cfg["edm"]["sigma_max"]:
        raise ConfigError(f"{source}: key 'edm.sigma_min' must be below 'edm.sigma_max'")


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return validate_config(cfg, str(path))
