"""The source files each pipeline stage runs, read from the imports, for the stage's ``deps``
in ``dvc.yaml`` (DVC reruns a stage when one of them changes).

A stage's code starts at its function in ``hkd/cli.py`` (``STAGE_FUNCTIONS``): the hkd modules
that function imports, the names it uses from cli's own imports, and the same for the cli
functions it calls. From there every hkd module those import, at any depth: a module's
top-level imports always, an import inside a function or class when that one can run (the
names taken from the module use it, directly or through other functions of the module). Then
the files a module reads beside itself (``Path(__file__).with_name(...)``, e.g. the report's
templates). A folder whose every module is reached is listed as the folder, so its data files
count too.

Not followed: ``cli.py`` (the dispatcher; an edit to a stage function there is not seen), the
top package's ``__init__`` (its version string) and the declaration modules (``DECLARATIONS``):
the config's values reach a stage as its ``params`` and the pipeline's files and commands as
its ``deps``, ``outs`` and ``cmd``, so an edit there that matters changes ``dvc.yaml`` itself.
``pipeline.py`` is a dependency only of a stage that imports one of its names that derive a
run's settings from the config (a variant's, the study's), or the whole module.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

#: the hkd package, and how dvc.yaml (at the repository root) names it
PACKAGE = Path(__file__).resolve().parent
PACKAGE_PATH = "src/hkd"
PIPELINE_FILE = f"{PACKAGE_PATH}/pipeline.py"
#: the module whose ``STAGE_FUNCTIONS`` maps each stage command to its function
CLI = "hkd.cli"
#: declaration modules: not followed; listed only for an import of one of these names
DECLARATIONS = {
    "hkd.config": frozenset(),
    "hkd.pipeline": frozenset(
        {
            "ABLATIONS",
            "CONTROL_ABLATIONS",
            "PAPER_LEVERS",
            "effective_hkd",
            "recipe_hkd",
            "parse_variant",
            "variant_config",
            "conditional_config",
            "curve_variants",
        }
    ),
}


def module_file(module: str) -> Path | None:
    """The file of an hkd module (``hkd.a.b`` -> a/b.py or a/b/__init__.py), None if none."""
    base = PACKAGE.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@cache
def parse(module: str) -> ast.Module:
    path = module_file(module)
    if path is None:
        raise ValueError(f"no source file for module {module} under {PACKAGE}")
    try:
        return ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path}: cannot parse ({exc})") from exc


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The module a ``from ... import`` names, relative imports resolved against ``module``."""
    if not node.level:
        return node.module or ""
    is_package = module_file(module).name == "__init__.py"
    parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join(parts + ([node.module] if node.module else []))


def bindings(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, tuple]]:
    """(name bound, (hkd module, names taken from it; () = the module itself)) of each hkd
    import of one import statement."""
    if isinstance(node, ast.Import):
        return [
            (a.asname or a.name.split(".")[0], (a.name, ())) for a in node.names if a.name.startswith("hkd.")
        ]
    source = _absolute(module, node)
    if source != "hkd" and not source.startswith("hkd."):
        return []
    out = []
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        entry = (sub, ()) if module_file(sub) else (source, (alias.name,))
        if entry[0] != "hkd":  # the top package's __init__ is not followed
            out.append((alias.asname or alias.name, entry))
    return out


def imported(module: str, node: ast.Import | ast.ImportFrom) -> list[tuple[str, tuple[str, ...]]]:
    """(hkd module, names taken from it; () = the module itself) of one import statement."""
    return [entry for _, entry in bindings(module, node)]


@cache
def outline(module: str) -> tuple[dict, set, list, dict]:
    """(top-level functions and classes by name, the names the module's other top-level
    statements use, the imports among those statements, the imports inside each def)."""
    defs, top_names, top_imports, def_imports = {}, set(), [], {}
    for node in parse(module).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defs[node.name] = node
            def_imports[node.name] = [
                i
                for n in ast.walk(node)
                if isinstance(n, (ast.Import, ast.ImportFrom))
                for i in imported(module, n)
            ]
            continue
        for n in ast.walk(node):
            if isinstance(n, (ast.Import, ast.ImportFrom)):
                top_imports += imported(module, n)
            elif isinstance(n, ast.Name):
                top_names.add(n.id)
    return defs, top_names, top_imports, def_imports


def used_defs(module: str, names: set[str] | None) -> set[str]:
    """The top-level defs that run when ``names`` of the module are used (None: any of
    them): those named, those the module's top-level statements use, and what they use."""
    defs, top_names = outline(module)[:2]
    todo = set(defs) if names is None else (names | top_names) & set(defs)
    seen = set()
    while todo:
        name = todo.pop()
        seen.add(name)
        todo |= {n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs} - seen
    return seen


def imports_of(module: str, names: set[str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """The hkd imports that run when ``names`` of a module are used (None: any): every
    top-level one, and those inside the defs that run (``used_defs``)."""
    _, _, top_imports, def_imports = outline(module)
    return top_imports + [i for d in sorted(used_defs(module, names)) for i in def_imports[d]]


def data_files(module: str) -> list[Path]:
    """Files and folders a module reads beside itself: ``Path(__file__).with_name("...")``."""
    out = []
    for node in ast.walk(parse(module)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "with_name"
            and "__file__" in ast.unparse(node.func.value)
            and len(node.args) == 1
            and isinstance(node.args[0], ast.Constant)
        ):
            out.append(module_file(module).with_name(node.args[0].value))
    return out


def stage_roots(command: str) -> list[tuple[str, tuple[str, ...]]]:
    """The imports a stage command's function in cli.py starts from (see the module doc)."""
    tree = parse(CLI)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    from_imports = {
        name: entry
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name, entry in bindings(CLI, node)
    }
    name = _stage_function(tree, command)
    roots, todo, visited = [], [name], set()
    while todo:
        fn = todo.pop()
        if fn in visited:
            continue
        visited.add(fn)
        for node in ast.walk(functions[fn]):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                roots += imported(CLI, node)
            elif isinstance(node, ast.Name) and node.id in from_imports:
                roots.append(from_imports[node.id])
            elif isinstance(node, ast.Name) and node.id in functions:
                todo.append(node.id)
    return roots


def _stage_function(tree: ast.Module, command: str) -> str:
    """The function name ``STAGE_FUNCTIONS`` in cli.py gives a stage command."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "STAGE_FUNCTIONS" for t in node.targets
        ):
            table = {ast.literal_eval(k): v.id for k, v in zip(node.value.keys, node.value.values)}
            if command not in table:
                raise ValueError(f"{module_file(CLI)}: STAGE_FUNCTIONS has no stage command {command!r}")
            return table[command]
    raise ValueError(f"{module_file(CLI)}: no STAGE_FUNCTIONS table")


def reached(roots: list[tuple[str, tuple[str, ...]]]) -> set[str]:
    """Every module the roots reach (declaration modules only as DECLARATIONS says), with
    the ``__init__`` of each package below the top one they sit in."""
    used: dict[str, set[str] | None] = {}  # module -> the names used from it (None: any)
    declared, todo = set(), list(roots)
    while todo:
        module, names = todo.pop()
        if module == CLI:
            continue
        if module in DECLARATIONS:
            if not names or set(names) & DECLARATIONS[module]:
                declared.add(module)
            continue
        wanted = set(names) if names else None
        before = used.get(module, set())
        if module in used and (before is None or (wanted is not None and wanted <= before)):
            continue
        used[module] = None if wanted is None or before is None else before | wanted
        todo += imports_of(module, used[module])
        parent = module.rpartition(".")[0]
        if parent != "hkd" and module_file(parent) is not None:
            todo.append((parent, ()))
    return set(used) | declared


def collapsed(paths: set[Path]) -> list[str]:
    """Paths as dvc.yaml lists them: a folder whose every module is in ``paths`` stands for
    everything in it, the outermost such folder first."""
    folders = sorted({p.parent for p in paths if p.parent != PACKAGE}, key=lambda d: len(d.parts))
    whole = []
    for folder in folders:
        if any(folder.is_relative_to(w) for w in whole):
            continue
        if all(m in paths for m in folder.rglob("*.py")):
            whole.append(folder)
    kept = {p for p in paths if not any(p.is_relative_to(w) for w in whole)} | set(whole)
    return sorted(f"{PACKAGE_PATH}/{p.relative_to(PACKAGE).as_posix()}" for p in kept)


@cache
def stage_code(command: str) -> tuple[str, ...]:
    """The source files and folders (repository-relative) that the stage command ``hkd
    <command>`` runs."""
    modules = reached(stage_roots(command))
    paths = {module_file(m) for m in modules}
    paths |= {f for m in modules for f in data_files(m)}
    return tuple(collapsed(paths))
