"""Each DVC stage's source dependencies are read from the imports of its stage function:
complete (nothing the stage imports is missing), and no coarser than the code it runs."""

import json
import subprocess
import sys
import textwrap

import pytest

from hkd import stage_code as sc
from hkd.pipeline import STAGES

#: a toy hkd package: stage "a" runs work/train.py (one of its functions imports export.py,
#: which the stage never calls), stage "b" a report that reads templates beside itself
TOY = {
    "__init__.py": "",
    "config.py": "X = 1\n",
    "pipeline.py": """
        from hkd.config import X
        def variant_config(cfg, v): return cfg
        def log_path(cfg): return ""
    """,
    "runtime.py": "def setup(cfg): return cfg\n",
    "export.py": "def write(cfg): return cfg\n",
    "cli.py": """
        from hkd.config import X
        from hkd.pipeline import variant_config

        def _setup(cfg):
            from hkd.runtime import setup
            return setup(cfg)

        def stage_a(cfg, paths, args):
            from hkd.work.train import train
            _setup(cfg)
            return train(cfg)

        def stage_b(cfg, paths, args):
            from hkd.report.build import build
            return build(variant_config(cfg, "x"))

        STAGE_FUNCTIONS = {"a": stage_a, "b": stage_b}
    """,
    "work/__init__.py": "",
    "work/train.py": """
        from hkd.pipeline import log_path
        from hkd.work import helpers
        from .loss import value

        def train(cfg):
            return value() + helpers.one()

        def export(cfg):
            from hkd.export import write
            return write(cfg)
    """,
    "work/loss.py": "def value(): return 0\n",
    "work/helpers.py": "def one(): return 1\n",
    "work/unused.py": "",
    "report/__init__.py": "",
    "report/build.py": """
        from pathlib import Path

        def build(cfg):
            return Path(__file__).with_name("templates")
    """,
    "report/templates/index.html.j2": "<html></html>\n",
}


@pytest.fixture
def toy(tmp_path, monkeypatch):
    root = tmp_path / "hkd"
    for name, text in TOY.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    monkeypatch.setattr(sc, "PACKAGE", root)
    for cached in (sc.parse, sc.outline, sc.stage_code):
        cached.cache_clear()
    yield root
    for cached in (sc.parse, sc.outline, sc.stage_code):
        cached.cache_clear()


def test_a_stage_depends_on_the_code_it_runs_and_no_more(toy):
    # helper called by the stage function, relative and package imports; not the export
    # function's import (never called), nor the config or the pipeline's paths
    assert sc.stage_code("a") == (
        "src/hkd/runtime.py",
        "src/hkd/work/__init__.py",
        "src/hkd/work/helpers.py",
        "src/hkd/work/loss.py",
        "src/hkd/work/train.py",
    )
    # a config derived by the pipeline counts; a folder whose every module runs is the
    # folder, its templates included
    assert sc.stage_code("b") == ("src/hkd/pipeline.py", "src/hkd/report")
    with pytest.raises(ValueError, match=r"cli.py: STAGE_FUNCTIONS has no stage command 'c'"):
        sc.stage_code("c")


def covered(path: str, deps) -> bool:
    return any(path == d or path.startswith(d + "/") for d in deps)


CODE = {s.name: sc.stage_code(s.command) for s in STAGES}


def test_the_stages_code(repo):
    assert all((repo / d).exists() for deps in CODE.values() for d in deps)
    assert covered("src/hkd/koopman/model.py", CODE["spectral"])  # it loads the HKD checkpoint
    template = "src/hkd/report/templates/index.html.j2"
    assert [name for name, deps in CODE.items() if covered(template, deps)] == ["report"]
    for name in ("teacher", "trajectories", "hkd_train", "variant_train", "teacher_sample", "sample"):
        assert not any(covered(f"src/hkd/{p}/x.py", CODE[name]) for p in ("report", "analysis", "metrics")), (
            name
        )
    derives_settings = {
        "variant_train",
        "variant_evaluate",
        "stability",
        "recipe_controls",
        "study",
        "report",
    }
    assert {name for name, deps in CODE.items() if "src/hkd/pipeline.py" in deps} == derives_settings
    assert not any("src/hkd/config.py" in deps or "src/hkd/cli.py" in deps for deps in CODE.values())
    import hkd.pipeline

    assert all(hasattr(hkd.pipeline, n) for n in sc.DECLARATIONS["hkd.pipeline"])


#: imports every stage's first modules afresh and prints the hkd modules that loaded
LOADED = """
import importlib, json, sys
from hkd.stage_code import stage_roots
roots = {c: sorted({m for m, _ in stage_roots(c)}) for c in json.loads(sys.argv[1])}
out = {}
for command, modules in roots.items():
    for m in [m for m in sys.modules if m.startswith("hkd.")]:
        del sys.modules[m]
    for m in modules:
        importlib.import_module(m)
    out[command] = sorted(m for m in sys.modules if m.startswith("hkd."))
print(json.dumps(out))
"""


def test_every_module_a_stage_loads_is_a_dependency(repo):
    """Against the interpreter: the modules that loading a stage's code imports are among its
    dependencies (the config, the pipeline, this derivation and the dispatcher aside)."""
    commands = {s.command: s.name for s in STAGES}
    r = subprocess.run(
        [sys.executable, "-c", LOADED, json.dumps(list(commands))],
        cwd=repo / "src",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = json.loads(r.stdout.splitlines()[-1])
    not_followed = {"hkd.config", "hkd.pipeline", "hkd.stage_code", "hkd.cli"}
    for command, modules in loaded.items():
        deps = CODE[commands[command]]
        missing = [m for m in modules if m not in not_followed and not covered(_file(m), deps)]
        assert not missing, (command, missing)


def _file(module: str) -> str:
    return str(sc.module_file(module).relative_to(sc.PACKAGE.parent.parent))
