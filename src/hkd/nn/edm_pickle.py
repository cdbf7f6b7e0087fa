"""Load the networks of released EDM snapshots (``edm-*.pkl``) without running their code.

EDM pickles every network through ``torch_utils.persistence``: each module is stored as
``_reconstruct_persistent_obj(meta)`` with its class name, its constructor arguments,
its attributes and the *source code of its module*, which EDM's own loader executes.
This loader never does. Its unpickler resolves only an allow-list of globals (tensor
rebuilding, ordered dicts, torch's ``ModuleDict``); every persistent object becomes a
plain record of (class name, state); the top-level ``ema`` network is then rebuilt as
*our* ``EDMPrecond`` from its stored constructor arguments, and its parameters and
buffers are loaded by name with strict name and shape checks. Anything else is an error
that names the class or global.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import torch

from hkd.nn.precond import EDMPrecond

#: EDM's network classes (training/networks.py) whose records may appear in the ``ema`` tree
NETWORK_CLASSES = frozenset({"EDMPrecond", "SongUNet", "UNetBlock", "Linear", "Conv2d", "GroupNorm",
                             "PositionalEmbedding", "FourierEmbedding"})
#: other persistent objects of a training snapshot, read as records and not used
IGNORED_CLASSES = frozenset({"EDMLoss", "VPLoss", "VELoss", "AugmentPipe"})
#: EDMPrecond arguments that do not change the weights or the function (fp32 is used here)
_DROPPED_KWARGS = ("use_fp16",)


class _Record:
    """A persistent EDM object, not rebuilt: its class name and pickled state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


class _Container:
    """torch.nn.ModuleDict / ModuleList rebuilt as a plain attribute holder."""


def _reconstruct_persistent(meta):
    if not isinstance(meta, dict) or meta.get("type") != "class":
        raise pickle.UnpicklingError("unexpected persistent object (not a class record)")
    name = meta.get("class_name")
    if name not in NETWORK_CLASSES | IGNORED_CLASSES:
        raise pickle.UnpicklingError(f"unrecognised EDM class {name!r}")
    state = meta.get("state")
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"EDM class {name!r} has no attribute state")
    return _Record(name, state)


def _storage_from_bytes(b: bytes):
    # torch's own _load_from_bytes calls torch.load(weights_only=False); weights_only suffices
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


def _reconstructor(cls, base, state):
    if cls is not _Container or base is not object or state is not None:
        raise pickle.UnpicklingError(f"unexpected object of type {getattr(cls, '__name__', cls)}")
    return _Container()


_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("builtins", "object"): object,
    ("torch.nn.modules.container", "ModuleDict"): _Container,
    ("torch.nn.modules.container", "ModuleList"): _Container,
    ("dnnlib.util", "EasyDict"): dict,
}


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an EDM pickle") from None


def _module_state(node, prefix: str, out: dict) -> None:
    """Parameters and buffers of a record tree, by their state_dict names."""
    state = node.state if isinstance(node, _Record) else vars(node)
    if isinstance(node, _Record) and node.class_name not in NETWORK_CLASSES:
        raise ValueError(f"EDM class {node.class_name!r} inside the network")
    for key in ("_parameters", "_buffers"):
        for name, t in (state.get(key) or {}).items():
            if t is not None:
                if not isinstance(t, torch.Tensor):
                    raise ValueError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            if not isinstance(child, (_Record, _Container)):
                raise ValueError(f"{prefix}{name} is a {type(child).__name__}, not an EDM module")
            _module_state(child, f"{prefix}{name}.", out)


def read_snapshot(path: str | Path) -> dict:
    """The unpickled snapshot: a dict whose networks are records (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EDM network pickle not found: {path}")
    try:
        with open(path, "rb") as f:
            data = _SnapshotUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except Exception as exc:  # truncated or not a pickle
        raise ValueError(f"{path}: not a readable EDM network pickle ({type(exc).__name__}: {exc})") from exc
    if not isinstance(data, dict) or "ema" not in data:
        raise ValueError(f"{path}: expected a snapshot dict with an 'ema' network")
    return data


def load_edm_pickle(path: str | Path) -> EDMPrecond:
    """The snapshot's ``ema`` network as our EDMPrecond (eval mode, fp32, on CPU)."""
    ema = read_snapshot(path)["ema"]
    if not isinstance(ema, _Record) or ema.class_name != "EDMPrecond":
        found = ema.class_name if isinstance(ema, _Record) else type(ema).__name__
        raise ValueError(f"{path}: 'ema' is {found!r}; only EDMPrecond networks are supported")
    args, kwargs = ema.state.get("_init_args", ()), dict(ema.state.get("_init_kwargs", {}))
    if args:
        raise ValueError(f"{path}: EDMPrecond was built with positional arguments {args!r}")
    model_type = kwargs.pop("model_type", "DhariwalUNet")
    if model_type != "SongUNet":
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (only SongUNet, EDM's "
                         "DDPM++/NCSN++ networks)")
    for key in _DROPPED_KWARGS:
        kwargs.pop(key, None)
    try:
        net = EDMPrecond(**kwargs)
    except TypeError as exc:
        raise ValueError(f"{path}: unsupported EDMPrecond arguments ({exc})") from exc
    tensors: dict[str, torch.Tensor] = {}
    _module_state(ema, "", tensors)
    expected = net.state_dict()
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path}: weights do not match EDMPrecond({kwargs}): missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return net.eval().requires_grad_(False)
