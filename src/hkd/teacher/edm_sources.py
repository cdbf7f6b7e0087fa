"""Digests of the network source an EDM pickle may carry, for the sources whose classes this
suite's ``EDMPrecond`` / ``SongUNet`` reproduce.

EDM's ``torch_utils.persistence`` stores in every pickled module the whole source of the module
that defines its class (``module_src``; ``training/networks.py`` for EDM's networks), and EDM's
own loader runs that source. This loader never runs it, but rebuilds the network from this
suite's classes: a file whose stored source is not one of these describes a different network
(an EDM fork, a modified class) and is refused unless ``teacher.allow_modified_edm_source`` is
set. Only the sha256 of each source is kept, not the source. The released ones are those of
``training/networks.py`` at every commit of https://github.com/NVlabs/edm that changed it
(recomputed with ``python workflow/scripts/edm_source_digests.py <edm checkout>``).
"""

from __future__ import annotations

import hashlib
from functools import cache

#: sha256 of a stored ``module_src`` (UTF-8) -> where that source comes from
KNOWN_SOURCES = {
    "2294828d5f59f5fd008f7141e6b8af2095918f2ce019f280a933e4779b5c3cef": (
        "released EDM: NVlabs/edm training/networks.py at 0a2ff34 (the first release)"
    ),
    "5db27dcd96674b95c72d5e6491b879cdc35e24039ada3411b4b46a28ed1fe284": (
        "released EDM: NVlabs/edm training/networks.py at b2a26c9 (unchanged to 008a4e5)"
    ),
    "f1d0a4838a5e75eb2bcfec9dfe972e2801943a997c494d2450582058c85c89f4": (
        "this suite's network source as exported with the shipped teachers (resources/edm-mnist28-*.pkl)"
    ),
}
#: the EDM commits whose training/networks.py the released digests are computed from
EDM_COMMITS = ("0a2ff34", "b2a26c9", "62072d2", "008a4e5")


def source_digest(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def source_origin(digest: str) -> str | None:
    """Where a stored source with this digest comes from; None for an unknown one. The source
    this suite's exporter writes today (``hkd export-teacher``) is known too."""
    if digest in KNOWN_SOURCES:
        return KNOWN_SOURCES[digest]
    if digest == _exported_digest():
        return (
            "this suite's network source (hkd/nn/unet.py, hkd/nn/precond.py), as hkd export-teacher writes it"
        )
    return None


@cache
def _exported_digest() -> str:
    """The digest of the source ``hkd export-teacher`` writes (read once per process: every
    class of a snapshot is checked against it)."""
    from hkd.teacher.edm_export import network_source

    return source_digest(network_source())
