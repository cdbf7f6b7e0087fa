"""The Snakemake commands the README, the documents under docs/ and the config comments tell
users to type parse as meant: ``--configfile`` takes several values, so a target written after
it is read as a config file and the command fails. The README stays a short landing page, and
every relative link between the documents points to an existing file."""

import re
import shlex
from pathlib import Path

import pytest
from snakemake.cli import get_argument_parser

ROOT = Path(__file__).resolve().parents[1]
MARKDOWN = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCUMENTS = [
    *MARKDOWN,
    *sorted((ROOT / "configs").glob("*.yaml")),
    ROOT / "workflow/profiles/slurm/config.yaml",
]
README_LIMIT = 10 * 1024  # bytes: the README is a landing page; topics live under docs/


def snakemake_commands(text: str) -> list[str]:
    """Every `snakemake ...` command in a text: code lines (continuations joined) and
    inline code spans; comments and ellipses dropped."""
    text = text.replace("\\\n", " ")
    found = re.findall(r"`(snakemake [^`]*)`", text)
    for line in text.splitlines():
        line = line.lstrip("# ").split("  #")[0].split(" (")[0].strip()
        if "&&" in line:
            line = line.split("&&")[-1].strip()
        if line.startswith("snakemake "):
            found.append(line)
    return [c for c in found if "..." not in c]


def test_commands_are_found():
    commands = [c for d in MARKDOWN for c in snakemake_commands(d.read_text())]
    assert any("configs/claims.yaml" in c for c in commands)
    assert any("configs/budget_curve.yaml" in c for c in snakemake_commands((ROOT / "README.md").read_text()))
    assert snakemake_commands("x\n#   snakemake all --configfile a.yaml   # note\n") == [
        "snakemake all --configfile a.yaml"
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_documented_commands_name_existing_config_files(document):
    parser = get_argument_parser()
    for command in snakemake_commands(document.read_text()):
        args = parser.parse_args(shlex.split(command)[1:])
        for path in args.configfile or []:
            assert (ROOT / path).is_file(), f"{document.name}: `{command}` reads {path} as a config file"
        if re.search(r"\s(all|study)(\s|$)", command):
            assert args.targets, f"{document.name}: `{command}` has no target"


def test_readme_is_short():
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_LIMIT, f"README.md is {size} bytes, more than {README_LIMIT}: move text into docs/"


def test_docs_exist_and_readme_links_each():
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs, "no documents under docs/"
    readme = (ROOT / "README.md").read_text()
    for doc in docs:
        assert f"](docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"
        assert doc.read_text().startswith("# "), f"docs/{doc.name} does not start with a # title"


@pytest.mark.parametrize("document", MARKDOWN, ids=lambda p: p.name)
def test_relative_links_point_to_existing_files(document):
    links = re.findall(r"\]\(([^)\s]+)\)", document.read_text())
    local = [
        link.split("#")[0]
        for link in links
        if not re.match(r"[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")
    ]
    if document.name == "README.md":
        assert any(link.startswith("docs/") for link in local)
    for link in local:
        assert (document.parent / link).is_file(), f"{document.name}: link ({link}) names no file"
