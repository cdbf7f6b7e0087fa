"""The Snakemake commands the README and the config comments tell users to type parse as
meant: ``--configfile`` takes several values, so a target written after it is read as a
config file and the command fails."""

import re
import shlex
from pathlib import Path

import pytest
from snakemake.cli import get_argument_parser

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "configs").glob("*.yaml")),
             ROOT / "workflow/profiles/slurm/config.yaml"]


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
    commands = snakemake_commands((ROOT / "README.md").read_text())
    assert any("configs/study.yaml" in c for c in commands)
    assert snakemake_commands("x\n#   snakemake all --configfile a.yaml   # note\n") == ["snakemake all --configfile a.yaml"]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_documented_commands_name_existing_config_files(document):
    parser = get_argument_parser()
    for command in snakemake_commands(document.read_text()):
        args = parser.parse_args(shlex.split(command)[1:])
        for path in args.configfile or []:
            assert (ROOT / path).is_file(), f"{document.name}: `{command}` reads {path} as a config file"
        if re.search(r"\s(all|study)(\s|$)", command):
            assert args.targets, f"{document.name}: `{command}` has no target"
