import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def smoke_cfg():
    from hkd.config import load_config

    return load_config(REPO / "configs" / "smoke.yaml")


def copy_workflow(dest: Path) -> Path:
    """The files a user needs to run the pipeline, copied into ``dest``."""
    for name in ("Snakefile", "environment.yml", "dvc.yaml", "pyproject.toml", ".dvcignore", ".gitignore"):
        shutil.copy2(REPO / name, dest / name)
    for name in ("workflow", "configs", "src"):
        shutil.copytree(
            REPO / name,
            dest / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    return dest
