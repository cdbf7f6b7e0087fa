"""Every file a stage writes goes through a temporary name that is renamed when complete
(hkd.io.atomic_path and the save_* helpers built on it): a killed stage never leaves a
half-written file that looks finished. This scans the package for other ways of writing."""

import re

WRITES = re.compile(
    r"(\w+|\))\.(write_text|write_bytes)\(|\bsavefig\((\w+)|\b(torch\.save|np\.savez?\w*|json\.dump)\(|"
    r"\bopen\([^)]*[\"'][wa]b?[\"']"
)


def direct_writes(line: str) -> list[str]:
    """The writes on a line that do not go to ``tmp`` (``with atomic_path(out) as tmp:``)."""
    return [m.group(0) for m in WRITES.finditer(line) if (m.group(1) or m.group(3)) != "tmp"]


def test_writes_go_through_atomic_paths(repo):
    offenders = []
    for path in sorted((repo / "src" / "hkd").rglob("*.py")):
        if path.name == "io.py":  # the helpers themselves
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if direct_writes(line):
                offenders.append(f"{path.relative_to(repo)}:{n}: {line.strip()}")
    assert not offenders, (
        "write through hkd.io.atomic_path / save_json / save_npz / save_torch:\n" + "\n".join(offenders)
    )


def test_the_scan_sees_a_direct_write():
    for line in (
        "Path(out).write_text(text)",
        "torch.save(state, path)",
        'with open(path, "w") as f:',
        "fig.savefig(out_png)",
        "np.savez(path, a=a)",
    ):
        assert direct_writes(line), line
    assert not direct_writes("tmp.write_text(html)") and not direct_writes('fig.savefig(tmp, format="png")')
