"""Teacher source ``edm_pickle``: the networks of released EDM snapshots (``edm-*.pkl``),
loaded without running their code.

EDM pickles every network through ``torch_utils.persistence``: each module is stored as
``_reconstruct_persistent_obj(meta)`` with its class name, its constructor arguments,
its attributes and the *source code of its module*, which EDM's own loader executes.
This loader never does. Its unpickler resolves only an allow-list of globals (tensor
rebuilding, ordered dicts, torch's ``ModuleDict``); every persistent object becomes a
plain record of (class name, state), and numpy scalars become Python numbers; the
top-level ``ema`` network is then rebuilt as
*our* ``EDMPrecond`` from its stored constructor arguments, and its parameters and
buffers are loaded by name with strict name and shape checks. Anything else is an error
that names the class or global. A file that is no pickled snapshot at all (a text file, an
empty one, a torch.save zip, corrupt or cut pickle data, a pickle of something else) is
``not an EDM network pickle: <path> (<reason>)``.
"""

from __future__ import annotations

import collections
import io
import pickle
from pathlib import Path

import torch

from hkd.io import sha256_file
from hkd.nn.precond import EDMPrecond

#: EDM's network classes (training/networks.py) that may appear in the ``ema`` tree; other
#: persistent objects of a snapshot (EDMLoss, AugmentPipe, ...) stay inert records
NETWORK_CLASSES = frozenset(
    {
        "EDMPrecond",
        "SongUNet",
        "UNetBlock",
        "Linear",
        "Conv2d",
        "GroupNorm",
        "PositionalEmbedding",
        "FourierEmbedding",
    }
)
#: EDMPrecond arguments that do not change the weights or the function (fp32 is used here)
_DROPPED_KWARGS = ("use_fp16",)


class _Refused(pickle.UnpicklingError):
    """An object the loader will not build (a global outside the allow-list, a malformed
    record): the file may be hostile, so the message names what was refused."""


class _Record:
    """A persistent EDM object, not rebuilt: its class name and pickled state."""

    def __init__(self, class_name: str, state: dict):
        self.class_name, self.state = class_name, state


class _Container:
    """torch.nn.ModuleDict / ModuleList rebuilt as a plain attribute holder."""


def _plain_dict(obj, what: str) -> dict:
    """A copy of a dict-typed pickle value. The unbound dict methods ignore instance
    attributes that BUILD may have put on an OrderedDict (e.g. a fake ``items``)."""
    if type(obj) not in (dict, collections.OrderedDict):
        raise ValueError(f"{what} is a {type(obj).__name__}, expected a dict")
    return dict(dict.items(obj))


def _reconstruct_persistent(meta):
    """Any persistent object becomes an inert record; which classes are acceptable is
    decided where the records are used (``load_edm_pickle``)."""
    try:
        meta = _plain_dict(meta, "persistent object")
        if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
            raise ValueError("not a class record")
        return _Record(meta["class_name"], _plain_dict(meta.get("state"), f"state of {meta['class_name']!r}"))
    except ValueError as exc:
        raise _Refused(f"unexpected persistent object: {exc}") from None


def _numpy_scalar(dtype, data=None):
    """numpy scalars (EDM stores e.g. ``skip_scale = np.sqrt(0.5)``) as Python numbers;
    only numeric dtypes."""
    import numpy as np

    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in "biuf"
        or not isinstance(data, bytes)
        or len(data) != dtype.itemsize
    ):
        raise _Refused("unexpected numpy scalar")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


def _numpy_dtype(spec, align=False, copy=True):
    import numpy as np

    if not isinstance(spec, str):
        raise _Refused("unexpected numpy dtype")
    return np.dtype(spec, align, copy)


def _storage_from_bytes(b: bytes):
    # torch's own _load_from_bytes calls torch.load(weights_only=False); weights_only suffices
    return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")


def _reconstructor(cls, base, state):
    if cls is not _Container or base is not object or state is not None:
        raise _Refused(f"unexpected object of type {getattr(cls, '__name__', cls)}")
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
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _SnapshotUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _GLOBALS[(module, name)]
        except KeyError:
            raise _Refused(f"refusing to load {module}.{name} from an EDM pickle") from None


def _module_state(node, prefix: str, out: dict, seen: set | None = None) -> None:
    """Parameters and buffers of a record tree, by their state_dict names."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        raise ValueError(f"{prefix or 'the network'} contains itself")
    seen.add(id(node))
    where = prefix.rstrip(".") or "the network"
    if isinstance(node, _Record) and node.class_name not in NETWORK_CLASSES:
        raise ValueError(f"unrecognised EDM class {node.class_name!r} at {where}")
    state = node.state if isinstance(node, _Record) else _plain_dict(vars(node), where)
    for key in ("_parameters", "_buffers"):
        for name, t in _plain_dict(state.get(key) or {}, f"{where}.{key}").items():
            if t is not None:
                if type(t) not in (torch.Tensor, torch.nn.Parameter):
                    raise ValueError(f"{prefix}{name} is a {type(t).__name__}, not a tensor")
                out[prefix + name] = t
    for name, child in _plain_dict(state.get("_modules") or {}, f"{where}._modules").items():
        if child is not None:
            if not isinstance(child, (_Record, _Container)):
                raise ValueError(f"{prefix}{name} is a {type(child).__name__}, not an EDM module")
            _module_state(child, f"{prefix}{name}.", out, seen)


def _not_a_snapshot(path: Path, reason: str) -> ValueError:
    return ValueError(f"not an EDM network pickle: {path} ({reason})")


def _header_problem(head: bytes) -> str | None:
    """Why a file whose first bytes are ``head`` cannot be an EDM snapshot: ``pickle.dump``
    writes those with protocol 2 or later, which starts with the PROTO opcode (byte 0x80)."""
    if not head:
        return "empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, e.g. a torch.save checkpoint"
    if head[0] == 0x80:
        return None
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return f"no pickle header; it starts with {head[:8].hex(' ')}"


def _unpickle(path: Path, raw: bytes):
    """The unpickled object; refusals keep their message, other failures say the file is not
    a snapshot (read from memory: a corrupt length field cannot make a huge read buffer)."""
    try:
        return _SnapshotUnpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise ValueError(f"{path}: {exc}") from exc
    except EOFError as exc:
        raise _not_a_snapshot(path, "the pickle ends early: truncated") from exc
    except Exception as exc:  # corrupt pickle data, or arguments no allowed global takes
        first = (str(exc).strip().splitlines() or [""])[0]
        if first == "pickle data was truncated":  # the C unpickler's EOFError for data in memory
            raise _not_a_snapshot(path, "the pickle ends early: truncated") from exc
        detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
        raise _not_a_snapshot(path, f"corrupt pickle data: {detail}") from exc


def read_snapshot(path: str | Path) -> dict:
    """The unpickled snapshot: a dict whose networks are records (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EDM network pickle not found: {path}")
    with open(path, "rb") as f:
        problem = _header_problem(f.read(64))
    if problem:
        raise _not_a_snapshot(path, problem)
    data = _unpickle(path, path.read_bytes())
    if not isinstance(data, dict):
        found = data.class_name if isinstance(data, _Record) else type(data).__name__
        raise _not_a_snapshot(path, f"it holds a {found}, not a training snapshot dict")
    if "ema" not in data:
        keys = ", ".join(sorted(map(str, data))[:5]) or "none"
        raise _not_a_snapshot(path, f"a dict without an 'ema' network; its keys: {keys}")
    return data


def load_edm_pickle(path: str | Path) -> EDMPrecond:
    """The snapshot's ``ema`` network as our EDMPrecond (eval mode, fp32, on CPU)."""
    ema = read_snapshot(path)["ema"]
    if not isinstance(ema, _Record) or ema.class_name != "EDMPrecond":
        found = ema.class_name if isinstance(ema, _Record) else type(ema).__name__
        raise ValueError(f"{path}: 'ema' is {found!r}; only EDMPrecond networks are supported")
    args = ema.state.get("_init_args", ())
    if args:
        raise ValueError(f"{path}: EDMPrecond was built with positional arguments {args!r}")
    try:
        kwargs = _plain_dict(ema.state.get("_init_kwargs"), "EDMPrecond's constructor arguments")
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    model_type = kwargs.pop("model_type", "DhariwalUNet")
    if model_type != "SongUNet":
        raise ValueError(
            f"{path}: model_type {model_type!r} is not supported (only SongUNet, EDM's "
            "DDPM++/NCSN++ networks)"
        )
    for key in _DROPPED_KWARGS:
        kwargs.pop(key, None)
    try:
        with torch.device("meta"):  # shapes first, so absurd arguments allocate nothing
            expected = EDMPrecond(**kwargs).state_dict()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: unsupported EDMPrecond arguments ({exc})") from exc
    tensors: dict[str, torch.Tensor] = {}
    try:
        _module_state(ema, "", tensors)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    missing = sorted(expected.keys() - tensors.keys())
    unexpected = sorted(tensors.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & tensors.keys() if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: weights do not match EDMPrecond({kwargs}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}"
        )
    net = EDMPrecond(**kwargs)
    net.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return net.eval().requires_grad_(False)


def import_edm_pickle(
    source: str, md5: str | None, download_to: str, out_path: str, cfg: dict | None = None
) -> dict:
    """A released EDM snapshot (URL or local path; md5-checked when ``md5`` is given) as a
    teacher checkpoint in the format of ``hkd teacher``, so every later stage reads it the
    same way. With ``cfg``, the network must be the architecture its ``network`` / ``data``
    sections describe. The pickle's code is never run (see the module docstring)."""
    from hkd.data.fetch import fetch_file
    from hkd.teacher.network import check_matches_config, save_teacher

    path = fetch_file(source, download_to, md5, "EDM network pickle")
    net = load_edm_pickle(path)
    if cfg is not None:
        check_matches_config(net.init_kwargs, cfg, f"EDM network pickle {path}")
    stats = {
        "source": source,
        "file_sha256": sha256_file(path),
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    save_teacher(net, out_path, stats)
    return stats
