"""A teacher checkpoint written as an EDM network pickle (``hkd export-teacher``).

The suite ships its embedded teachers in the format of EDM's released snapshots, so that the
embedded default imports them through the same ``edm_pickle`` path as the paper configs import
NVIDIA's. The layout is EDM's ``torch_utils.persistence``: a dict whose ``ema`` network, and
every module under it, is stored as ``torch_utils.persistence._reconstruct_persistent_obj(meta)``
with the class name, the module's attributes, the constructor arguments of ``EDMPrecond``
(``model_type='SongUNet'``) and, as ``module_src``, this suite's own network source
(``hkd/nn/unet.py`` and ``hkd/nn/precond.py``), whose class and parameter names are EDM's.
``hkd.teacher.edm_pickle`` reads such a file without running that source.
"""

from __future__ import annotations

import collections
import inspect
import io
import pickle
from pathlib import Path

import numpy as np
import torch

from hkd.io import atomic_path
from hkd.nn import precond, unet
from hkd.nn.precond import EDMPrecond

#: the global EDM's pickles call for each persistent object, and the version of its layout
PERSISTENCE = ("torch_utils.persistence", "_reconstruct_persistent_obj")
PERSISTENCE_VERSION = 6


def network_source() -> str:
    """One self-contained module defining the network classes (unet.py, then precond.py
    without its import of unet), as EDM stores the source of ``training/networks.py``."""
    unet_src = inspect.getsource(unet)
    precond_src = inspect.getsource(precond)
    drop = ("from __future__ import annotations", "from hkd.nn.unet import SongUNet")
    precond_body = "\n".join(line for line in precond_src.splitlines() if line.strip() not in drop)
    return unet_src + "\n\n# --- hkd/nn/precond.py ---\n" + precond_body + "\n"


class _Persistent:
    """A module as EDM's persistence pickles it: ``_reconstruct_persistent_obj(meta)``."""

    def __init__(self, meta: dict):
        self.meta = meta


class _Pickler(pickle._Pickler):
    """The pure-Python pickler, writing EDM's persistence global by name (no module of that
    name exists here, so the standard pickler could not look it up)."""

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Persistent):
            self.save(PERSISTENCE[0])
            self.save(PERSISTENCE[1])
            self.write(pickle.STACK_GLOBAL)
            self.save((obj.meta,))
            self.write(pickle.REDUCE)
            return
        super().save(obj, save_persistent_id)


def _attributes(module: torch.nn.Module) -> dict:
    """A module's ``__dict__`` as EDM's persistence stores it (the whole of it, hooks and all;
    floats that EDM computes with numpy, e.g. ``skip_scale``, as numpy scalars)."""
    return {k: np.float64(v) if type(v) is float else v for k, v in vars(module).items()}


def _layout(module: torch.nn.Module, source: str, init_kwargs: dict | None = None):
    """``module`` and its children in EDM's persistence layout; ModuleDicts stay plain torch
    containers, as in EDM."""
    children = collections.OrderedDict(
        (name, None if child is None else _layout(child, source)) for name, child in module._modules.items()
    )
    if isinstance(module, torch.nn.ModuleDict):
        container = torch.nn.ModuleDict()
        container._modules = children
        return container
    state = _attributes(module)
    state.update(training=False, _init_args=(), _init_kwargs=init_kwargs or {}, _modules=children)
    meta = dict(
        type="class",
        version=PERSISTENCE_VERSION,
        module_src=source,
        class_name=type(module).__name__,
        state=state,
    )
    return _Persistent(meta)


def edm_init_kwargs(net: EDMPrecond) -> dict:
    """EDMPrecond's constructor arguments as EDM records them (``model_type``, ``use_fp16``)."""
    return dict(net.init_kwargs, model_type="SongUNet", use_fp16=False)


def snapshot_bytes(net: EDMPrecond, dataset_kwargs: dict | None = None) -> bytes:
    """The pickle of a snapshot dict ``{ema, loss_fn, augment_pipe, dataset_kwargs}`` whose
    ``ema`` is ``net`` (fp32, CPU) in EDM's layout."""
    net = net.to("cpu", torch.float32).eval()
    snapshot = dict(
        ema=_layout(net, network_source(), edm_init_kwargs(net)),
        loss_fn=None,
        augment_pipe=None,
        dataset_kwargs=dict(dataset_kwargs or {}),
    )
    buf = io.BytesIO()
    _Pickler(buf, protocol=4).dump(snapshot)
    return buf.getvalue()


def export_teacher(
    teacher_path: str | Path, out_path: str | Path, dataset_kwargs: dict | None = None
) -> dict:
    """Write the teacher checkpoint ``teacher_path`` (``hkd teacher``'s output) as an EDM network
    pickle at ``out_path`` (atomically), read it back through the ``edm_pickle`` loader and check
    that every weight came back bit-identical. Returns the file's sha256, size and parameters."""
    from hkd.io import sha256_file
    from hkd.teacher.edm_pickle import load_edm_pickle
    from hkd.teacher.network import load_teacher

    net = load_teacher(str(teacher_path))
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(snapshot_bytes(net, dataset_kwargs))
    back = load_edm_pickle(out_path).state_dict()
    for name, tensor in net.state_dict().items():
        if not torch.equal(back[name], tensor.float()):
            raise RuntimeError(f"{out_path}: {name} does not read back identically; the file is not usable")
    return {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "bytes": Path(out_path).stat().st_size,
        "parameters": sum(p.numel() for p in net.parameters()),
        "network_kwargs": net.init_kwargs,
    }
