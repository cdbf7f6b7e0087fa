"""Print the sha256 of ``training/networks.py`` at every commit of an EDM checkout that changed
it: the digests ``hkd.teacher.edm_sources.KNOWN_SOURCES`` lists as released EDM source.

    python workflow/scripts/edm_source_digests.py /path/to/NVlabs/edm   (a git checkout or bare clone)
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("edm", help="a git clone of https://github.com/NVlabs/edm")
    args = p.parse_args()
    git = ["git", "-C", args.edm]
    commits = subprocess.run(
        [*git, "log", "--format=%h", "--", "training/networks.py"], capture_output=True, text=True, check=True
    ).stdout.split()
    for commit in commits:
        src = (
            subprocess.run([*git, "show", f"{commit}:training/networks.py"], capture_output=True, check=True)
            .stdout.decode("utf-8")
            .replace("\r\n", "\n")
        )  # inspect.getsource reads with universal newlines
        print(commit, hashlib.sha256(src.encode("utf-8")).hexdigest())


if __name__ == "__main__":
    main()
