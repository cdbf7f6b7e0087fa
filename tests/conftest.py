import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

#: commands that keep state in, or write results to, their working directory: Snakemake
#: (.snakemake/: locks, incomplete-run markers), DVC (.dvc/, dvc.lock) and the stage commands
PIPELINE_TOOLS = ("snakemake", "dvc", "hkd")


def pipeline_tool(args) -> str | None:
    """The pipeline tool a command line starts (as the program or as ``-m <module>``), or None."""
    words = shlex.split(args) if isinstance(args, str) else [os.fspath(a) for a in args]
    for i, word in enumerate(words):
        if (i == 0 and Path(word).name in PIPELINE_TOOLS) or (
            i and words[i - 1] == "-m" and word in PIPELINE_TOOLS
        ):
            return Path(word).name
    return None


class CheckoutGuardedPopen(subprocess.Popen):
    """``subprocess.Popen`` that refuses to start a pipeline tool inside the checkout: the
    suite must pass whatever state a run left there, and leave none behind."""

    def __init__(self, args, *rest, **kwargs):
        tool = pipeline_tool(args)
        cwd = Path(kwargs.get("cwd") or os.getcwd()).resolve()
        if tool and cwd.is_relative_to(REPO):
            raise RuntimeError(
                f"a test started {tool} in the checkout ({cwd}); run it in a copy "
                "(conftest.copy_workflow) or in tmp_path"
            )
        super().__init__(args, *rest, **kwargs)


@pytest.fixture(autouse=True)
def _pipeline_tools_stay_out_of_the_checkout(monkeypatch):
    monkeypatch.setattr(subprocess, "Popen", CheckoutGuardedPopen)


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
    for name in ("workflow", "configs", "src", "claims"):  # claims/: the claims tier's dvc.yaml
        shutil.copytree(
            REPO / name,
            dest / name,
            symlinks=True,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    for shipped in shipped_files():
        (dest / shipped).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / shipped, dest / shipped)
    return dest


def shipped_files() -> list[str]:
    """The files under resources/ that the embedded default imports (its teachers)."""
    from hkd.config import is_url, load_config

    teacher = load_config(REPO / "configs" / "default.yaml")["teacher"]
    paths = [teacher.get(k) for k in ("path", "conditional_path")]
    return [p for p in paths if p and not is_url(p)]
