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

Because the network is rebuilt from this suite's classes, the source stored with each class is
checked against the released EDM network code (``edm_sources``: its sha256 per EDM commit): a
file from a modified EDM is refused, naming the class and ``teacher.allow_modified_edm_source``,
which accepts it and marks the teacher as built from modified source in the report.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
from pathlib import Path

import torch

from hkd.io import sha256_file, torch_load_problem
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
    """A persistent EDM object, not rebuilt: its class name, pickled state and the source
    of its module that EDM stored with it (None where none was stored)."""

    def __init__(self, class_name: str, state: dict, source: str | None = None):
        self.class_name, self.state, self.source = class_name, state, source


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
        source = meta.get("module_src")
        if source is not None and type(source) is not str:
            raise ValueError(f"the stored source of {meta['class_name']!r} is a {type(source).__name__}")
        state = _plain_dict(meta.get("state"), f"state of {meta['class_name']!r}")
        return _Record(meta["class_name"], state, source)
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
    try:
        return torch.load(io.BytesIO(b), weights_only=True, map_location="cpu")
    except Exception as exc:  # a payload torch refuses: say what it refused, not torch's advice
        raise _Refused(f"refusing a nested torch payload ({torch_load_problem(exc)})") from None


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


def _module_state(node, prefix: str, out: dict, seen: set | None = None, sources: dict | None = None) -> None:
    """Parameters and buffers of a record tree, by their state_dict names; ``sources``
    collects each record's stored source by class name."""
    seen = set() if seen is None else seen
    sources = {} if sources is None else sources
    if id(node) in seen:
        raise ValueError(f"{prefix or 'the network'} contains itself")
    seen.add(id(node))
    where = prefix.rstrip(".") or "the network"
    if isinstance(node, _Record) and node.class_name not in NETWORK_CLASSES:
        raise ValueError(f"unrecognised EDM class {node.class_name!r} at {where}")
    if isinstance(node, _Record):
        sources.setdefault(node.class_name, set()).add(node.source)
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
            _module_state(child, f"{prefix}{name}.", out, seen, sources)


def _not_a_snapshot(path: Path, reason: str) -> ValueError:
    return ValueError(f"not an EDM network pickle: {path} ({reason})")


def _old_pickle(raw: bytes) -> str | None:
    """What a protocol 0 or 1 pickle imports (read opcode by opcode, nothing is built), or
    None where ``raw`` does not parse as one."""
    imports = []
    try:
        for op, arg, _ in pickletools.genops(raw):
            if op.name == "GLOBAL":
                imports.append(str(arg).replace(" ", "."))
            if op.name == "STOP":
                break
        else:
            return None
    except Exception:  # not a pickle opcode stream
        return None
    named = f"; it imports {', '.join(dict.fromkeys(imports))}" if imports else ""
    return f"a pickle of protocol 0 or 1, which EDM never writes{named}"


def _header_problem(raw: bytes) -> str | None:
    """Why a file of bytes ``raw`` cannot be an EDM snapshot: ``pickle.dump`` writes those with
    protocol 2 or later, which starts with the PROTO opcode (byte 0x80)."""
    head = raw[:64]
    if not head:
        return "empty file"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive, e.g. a torch.save checkpoint"
    if head[0] == 0x80:
        return None
    old = _old_pickle(raw)
    if old:
        return old
    if all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file"
    return f"no pickle header; it starts with {head[:8].hex(' ')}"


def _a(name: str) -> str:
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


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
        detail = torch_load_problem(exc) if first else type(exc).__name__
        raise _not_a_snapshot(path, f"corrupt pickle data: {detail}") from exc


def read_snapshot(path: str | Path) -> dict:
    """The unpickled snapshot: a dict whose networks are records (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EDM network pickle not found: {path}")
    raw = path.read_bytes()
    problem = _header_problem(raw)
    if problem:
        raise _not_a_snapshot(path, problem)
    data = _unpickle(path, raw)
    if not isinstance(data, dict):
        found = data.class_name if isinstance(data, _Record) else type(data).__name__
        raise _not_a_snapshot(path, f"it holds {_a(found)}, not a training snapshot dict")
    if "ema" not in data:
        keys = ", ".join(sorted(map(str, data))[:5]) or "none"
        raise _not_a_snapshot(path, f"a dict without an 'ema' network; its keys: {keys}")
    return data


#: the config key that accepts a snapshot whose stored network source is not a known one
ALLOW_MODIFIED_KEY = "teacher.allow_modified_edm_source"


def check_stored_source(path, sources: dict, allow_modified: bool = False) -> dict:
    """Where the network source stored with each class comes from (``edm_sources``). An
    unknown source (an EDM fork, a changed class) describes another network than the one
    rebuilt here: refused, naming the class and the key that accepts it anyway."""
    from hkd.teacher.edm_sources import source_digest, source_origin

    origins, modified = {}, []
    for class_name in sorted(sources, key=lambda c: (c != "EDMPrecond", c)):  # the top class first
        for source in sources[class_name]:
            digest = source_digest(source) if source is not None else None
            origin = source_origin(digest) if digest else None
            origins.setdefault(digest or "none stored", origin or "unknown")
            if origin is None:
                modified.append((class_name, digest))
    if modified and not allow_modified:
        class_name, digest = modified[0]
        stored = f"its stored source has sha256 {digest}" if digest else "no source is stored with it"
        raise ValueError(
            f"{path}: the network class {class_name!r} is not EDM's released code ({stored}, "
            f"{len(modified)} class(es) in all); the file may come from a modified EDM and would "
            f"not be the network it describes. Set {ALLOW_MODIFIED_KEY}: true to rebuild it with "
            "this suite's EDMPrecond anyway (its stored code is never run)"
        )
    return {
        "stored_source": "modified (accepted by " + ALLOW_MODIFIED_KEY + ")" if modified else "known",
        "stored_source_origins": origins,
        "modified_classes": sorted({c for c, _ in modified}),
    }


def load_edm_pickle(path: str | Path, allow_modified_source: bool = False) -> EDMPrecond:
    """The snapshot's ``ema`` network as our EDMPrecond (eval mode, fp32, on CPU)."""
    return read_network(path, allow_modified_source)[0]


def read_network(path: str | Path, allow_modified_source: bool = False) -> tuple[EDMPrecond, dict]:
    """The snapshot's ``ema`` network as our EDMPrecond (eval mode, fp32, on CPU) and what
    ``check_stored_source`` found of its stored source."""
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
    sources: dict[str, set] = {}
    try:
        _module_state(ema, "", tensors, sources=sources)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    source_check = check_stored_source(path, sources, allow_modified_source)
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
    return net.eval().requires_grad_(False), source_check


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
    allow = cfg is not None and cfg["teacher"]["allow_modified_edm_source"]
    net, source_check = read_network(path, allow)
    if cfg is not None:
        check_matches_config(net.init_kwargs, cfg, f"EDM network pickle {path}")
    stats = {
        "source": source,
        "file_sha256": sha256_file(path),
        "parameters": sum(p.numel() for p in net.parameters()),
        **source_check,
    }
    save_teacher(net, out_path, stats)
    return stats
