"""EDM network pickles: written here in EDM's persistence layout, loaded without running
the code they carry."""

import collections
import pickle
import re
import sys
import types

import numpy as np
import pytest
import torch

from hkd.nn.precond import EDMPrecond
from hkd.teacher.edm_export import network_source
from hkd.teacher.edm_pickle import load_edm_pickle, read_network, read_snapshot

MARKER = "/tmp/hkd-edm-pickle-code-ran"
# what EDM stores as module_src; a loader that executes it would create MARKER
MODULE_SRC = f"import pathlib\npathlib.Path({MARKER!r}).touch()\n"
# a stored source the loader knows: the one this suite's exporter writes (the released EDM
# sources are known by digest only, hkd/teacher/edm_sources.py)
KNOWN_SRC = network_source()


@pytest.fixture
def edm_modules(monkeypatch):
    """Stand-ins for EDM's ``torch_utils.persistence`` and ``dnnlib.util`` so that pickle
    writes the same global names as EDM does."""
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # EDM's version executes meta['module_src']
        raise AssertionError("never called when writing")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, mod in (
        ("torch_utils", types.ModuleType("torch_utils")),
        ("torch_utils.persistence", persistence),
        ("dnnlib", types.ModuleType("dnnlib")),
        ("dnnlib.util", util),
    ):
        monkeypatch.setitem(sys.modules, name, mod)
    return persistence._reconstruct_persistent_obj, util.EasyDict


class Persistent:
    """Pickles as EDM's persistence does: _reconstruct_persistent_obj(meta)."""

    def __init__(self, fn, class_name, state, source=KNOWN_SRC):
        self.fn, self.meta = (
            fn,
            dict(type="class", version=6, module_src=source, class_name=class_name, state=state),
        )

    def __reduce__(self):
        return (self.fn, (self.meta,))


def edm_layout(module, fn, init_kwargs=None, source=KNOWN_SRC):
    # EDM computes some attributes with numpy (e.g. skip_scale = np.sqrt(0.5)): pickled as numpy scalars
    state = {
        k: np.float64(v) if type(v) is float else v
        for k, v in vars(module).items()
        if not k.startswith("_") and k != "init_kwargs"
    }
    state.update(
        _init_args=(),
        _init_kwargs=init_kwargs or {},
        _parameters=collections.OrderedDict(module._parameters),
        _buffers=collections.OrderedDict(module._buffers),
    )
    children = collections.OrderedDict(
        (n, None if c is None else edm_layout(c, fn, source=source)) for n, c in module._modules.items()
    )
    state["_modules"] = children
    if isinstance(module, torch.nn.ModuleDict):  # a plain torch container, as in EDM
        container = torch.nn.ModuleDict()
        container._modules = children  # holding the persistent records of its blocks
        return container
    return Persistent(fn, type(module).__name__, state, source)


def small_precond():
    torch.manual_seed(0)
    kw = dict(
        img_resolution=16,
        img_channels=3,
        label_dim=10,
        model_channels=16,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        augment_dim=9,
        dropout=0.13,
        embedding_type="positional",
        encoder_type="standard",
        decoder_type="standard",
        channel_mult_noise=1,
        resample_filter=[1, 1],
    )
    net = EDMPrecond(**kw)
    with torch.no_grad():  # EDM zero-initialises some output layers; make every weight count
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    edm_kwargs = dict(kw, model_type="SongUNet", use_fp16=False)
    return net, edm_kwargs


def write_snapshot(path, edm_modules, net, edm_kwargs, extra=None, source=KNOWN_SRC):
    fn, EasyDict = edm_modules
    snap = dict(
        ema=edm_layout(net, fn, edm_kwargs, source),
        loss_fn=Persistent(fn, "EDMLoss", dict(P_mean=-1.2, P_std=1.2, sigma_data=0.5)),
        augment_pipe=None,
        dataset_kwargs=EasyDict(path="datasets/cifar10-32x32.zip", xflip=False),
    )
    snap.update(extra or {})
    with open(path, "wb") as f:
        pickle.dump(snap, f)


def test_round_trip_in_edm_layout(tmp_path, edm_modules):
    net, edm_kwargs = small_precond()
    path = tmp_path / "edm-tiny-cond.pkl"
    write_snapshot(path, edm_modules, net, edm_kwargs, source=MODULE_SRC)  # code that must never run
    raw = path.read_bytes()
    for name in (
        b"torch_utils.persistence",
        b"_reconstruct_persistent_obj",
        b"module_src",
        b"ModuleDict",
        b"_rebuild_parameter",
        b"dnnlib.util",
        b"multiarray",
    ):
        assert name in raw  # the globals and fields of EDM's own snapshots
    snap = read_snapshot(path)
    assert snap["dataset_kwargs"]["path"] == "datasets/cifar10-32x32.zip"
    loaded = load_edm_pickle(path, allow_modified_source=True)  # not EDM's source: accepted by the key
    assert loaded.init_kwargs["label_dim"] == 10 and not loaded.training
    x, sigma = torch.randn(4, 3, 16, 16), torch.tensor([0.1, 1.0, 5.0, 80.0])
    labels = torch.nn.functional.one_hot(torch.arange(4), 10).float()
    aug = torch.randn(4, 9)
    with torch.no_grad():
        ref = net.eval()(x, sigma, labels)
        out = loaded(x, sigma, labels)
        # the augmentation embedding is part of the loaded weights too
        assert torch.equal(loaded.model.map_augment.weight, net.model.map_augment.weight)
        assert torch.equal(
            loaded.model(x, sigma.log() / 4, labels, aug), net.model(x, sigma.log() / 4, labels, aug)
        )
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    import os

    assert not os.path.exists(MARKER)


def test_code_and_unknown_classes_are_refused(tmp_path, edm_modules):
    fn, _ = edm_modules
    net, edm_kwargs = small_precond()
    # outside the network an unknown persistent object stays an inert record
    inert = tmp_path / "inert.pkl"
    write_snapshot(inert, edm_modules, net, edm_kwargs, {"loss_fn": Persistent(fn, "Backdoor", {})})
    assert read_snapshot(inert)["loss_fn"].class_name == "Backdoor"
    load_edm_pickle(inert)
    # inside it, it is an error naming the class and where it sits
    ema = edm_layout(net, fn, edm_kwargs)
    ema.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["map_noise"].meta["class_name"] = (
        "Backdoor"
    )
    evil = tmp_path / "evil-class.pkl"
    write_snapshot(evil, edm_modules, net, edm_kwargs, {"ema": ema})
    with pytest.raises(
        ValueError, match="evil-class.pkl: unrecognised EDM class 'Backdoor' at model.map_noise"
    ):
        load_edm_pickle(evil)
    vp = tmp_path / "vp.pkl"
    write_snapshot(vp, edm_modules, net, edm_kwargs, {"ema": Persistent(fn, "VPPrecond", {})})
    with pytest.raises(ValueError, match="vp.pkl: 'ema' is 'VPPrecond'"):
        load_edm_pickle(vp)

    class System:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {MARKER}",))

    evil = tmp_path / "evil-global.pkl"
    write_snapshot(evil, edm_modules, net, edm_kwargs, {"augment_pipe": System()})
    with pytest.raises(ValueError, match=r"evil-global.pkl: refusing to load (posix|os)\.system"):
        load_edm_pickle(evil)
    import os

    assert not os.path.exists(MARKER)


def test_mismatches_and_bad_files_name_the_problem(tmp_path, edm_modules):
    net, edm_kwargs = small_precond()
    path = tmp_path / "wrong-width.pkl"
    write_snapshot(path, edm_modules, net, dict(edm_kwargs, model_channels=32))
    with pytest.raises(ValueError, match="wrong-width.pkl: weights do not match.*wrong shape"):
        load_edm_pickle(path)
    path = tmp_path / "huge.pkl"  # shapes are checked on the meta device: nothing is allocated
    write_snapshot(path, edm_modules, net, dict(edm_kwargs, model_channels=1 << 20))
    with pytest.raises(ValueError, match="huge.pkl: weights do not match"):
        load_edm_pickle(path)
    path = tmp_path / "adm.pkl"
    write_snapshot(path, edm_modules, net, dict(edm_kwargs, model_type="DhariwalUNet"))
    with pytest.raises(ValueError, match="adm.pkl: model_type 'DhariwalUNet'"):
        load_edm_pickle(path)
    good = tmp_path / "good.pkl"
    write_snapshot(good, edm_modules, net, edm_kwargs)
    cut = tmp_path / "truncated.pkl"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="truncated.pkl"):
        load_edm_pickle(cut)
    with pytest.raises(FileNotFoundError, match="absent.pkl"):
        load_edm_pickle(tmp_path / "absent.pkl")


def _cfg_for(smoke_cfg, kw):
    """A run config whose network / data sections describe the EDMPrecond arguments ``kw``."""
    import copy

    cfg = copy.deepcopy(smoke_cfg)
    cfg["data"].update(source="image_folder", resolution=kw["img_resolution"])
    cfg["teacher"] = {
        "source": "edm_pickle",
        "path": "x.pkl",
        "md5": None,
        "allow_modified_edm_source": False,
    }
    cfg["network"].update(
        {
            k: kw[k]
            for k in (
                "model_channels",
                "channel_mult",
                "num_blocks",
                "attn_resolutions",
                "dropout",
                "augment_dim",
                "label_dim",
            )
        },
        channel_mult_emb=4,
    )
    return cfg


def test_imported_pickle_is_a_teacher_checkpoint(tmp_path, edm_modules, smoke_cfg):
    """`import_edm_pickle` writes the checkpoint every later stage reads (`load_teacher`),
    conditional networks included; a network other than the config's is refused by key."""
    from torchvision.datasets.utils import calculate_md5

    from hkd.teacher.edm_pickle import import_edm_pickle
    from hkd.teacher.network import load_teacher

    cond, cond_kwargs = small_precond()
    path = tmp_path / "edm-tiny-cond.pkl"
    write_snapshot(path, edm_modules, cond, cond_kwargs)
    cfg = _cfg_for(smoke_cfg, cond_kwargs)
    import_edm_pickle(str(path), None, str(tmp_path / "c.pkl"), str(tmp_path / "c.pt"), cfg)
    cond_teacher = load_teacher(str(tmp_path / "c.pt"))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 20.0])
    labels = torch.nn.functional.one_hot(torch.tensor([3, 7]), 10).float()
    with torch.no_grad():
        torch.testing.assert_close(
            cond_teacher(x, sigma, labels), cond.eval()(x, sigma, labels), rtol=0, atol=0
        )
        assert not torch.allclose(cond_teacher(x, sigma, labels), cond_teacher(x, sigma, labels.roll(1, 1)))
    wider = dict(cfg, network=dict(cfg["network"], model_channels=32, label_dim=0))
    with pytest.raises(
        ValueError,
        match=r"(?s)label_dim: 10 in the network, 0 from the config.*model_channels: 16 in the network, 32",
    ):
        import_edm_pickle(str(path), None, str(tmp_path / "c.pkl"), str(tmp_path / "w.pt"), wider)
    assert not (tmp_path / "w.pt").exists()

    kw = {k: v for k, v in cond.init_kwargs.items() if k != "label_dim"}
    torch.manual_seed(1)
    net = EDMPrecond(**kw)
    edm_kwargs = dict(cond_kwargs, label_dim=0)
    pkl = tmp_path / "edm-tiny-uncond.pkl"
    write_snapshot(pkl, edm_modules, net, edm_kwargs)
    out = tmp_path / "teacher" / "teacher.pt"
    stats = import_edm_pickle(str(pkl), calculate_md5(str(pkl)), str(tmp_path / "cache.pkl"), str(out))
    assert stats["parameters"] == sum(p.numel() for p in net.parameters())
    teacher = load_teacher(str(out))
    x, sigma = torch.randn(2, 3, 16, 16), torch.tensor([0.5, 20.0])
    with torch.no_grad():
        torch.testing.assert_close(teacher(x, sigma), net.eval()(x, sigma), rtol=0, atol=0)
    with pytest.raises(ValueError, match="edm-tiny-uncond.pkl has md5"):
        import_edm_pickle(str(pkl), "0" * 32, str(tmp_path / "cache.pkl"), str(tmp_path / "other.pt"))
    assert not (tmp_path / "other.pt").exists()


def _bad_files(tmp_path):
    """{file: the reason its error gives} for files that are no EDM network snapshot."""
    rng = np.random.default_rng(0)
    files = {
        "notes.txt": (b"model: edm-cifar10-32x32-uncond-vp\nsteps: 18\n", "a text file"),
        "empty.pkl": (b"", "empty file"),
        "random.bin": (b"\x07" + rng.integers(0, 256, 4095, dtype=np.uint8).tobytes(), "no pickle header"),
        "a-list.pkl": (pickle.dumps([1, 2, 3]), "it holds a list, not a training snapshot dict"),
        "no-ema.pkl": (pickle.dumps({"G": 1, "D": 2}), "a dict without an 'ema' network; its keys: D, G"),
        "cut.pkl": (pickle.dumps({"ema": list(range(1000))})[:-100], "the pickle ends early: truncated"),
    }
    for seed in range(8):  # random bytes behind a valid protocol header
        body = np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes()
        files[f"random-{seed}.pkl"] = (b"\x80\x04" + body, "")
    for name, (raw, _) in files.items():
        (tmp_path / name).write_bytes(raw)
    torch.save({"ema": {"w": torch.zeros(2)}}, tmp_path / "checkpoint.pt")
    files["checkpoint.pt"] = (None, "a zip archive, e.g. a torch.save checkpoint")
    return {tmp_path / name: reason for name, (_, reason) in files.items()}


def test_files_that_are_no_snapshot_say_so(tmp_path):
    """A text file, an empty file, random bytes, a pickle of something else, a torch.save
    checkpoint: 'not an EDM network pickle: <path> (<reason>)', nothing else."""
    import re

    for path, reason in _bad_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            load_edm_pickle(path)
        message = str(info.value)
        assert message.startswith(f"not an EDM network pickle: {path} ("), message
        assert reason in message and "\n" not in message, message
        if not reason:  # random data after the header: the unpickler's complaint, on one line
            assert re.search(r"\((corrupt pickle data: \w+|the pickle ends early)", message), message


def test_stored_source_must_be_edm_released_code(tmp_path, edm_modules, smoke_cfg):
    """A snapshot whose stored network source was changed (here: D_x = 0 appended to it) is
    refused, naming the class and the key; with the key it loads, and the imported
    checkpoint records that its source was modified. A known source loads as such."""
    from hkd.teacher.edm_pickle import import_edm_pickle
    from hkd.teacher.network import describe_origin, teacher_stats

    net, edm_kwargs = small_precond()
    known = tmp_path / "known.pkl"
    write_snapshot(known, edm_modules, net, edm_kwargs)
    _, found = read_network(known)
    assert found["stored_source"] == "known" and found["modified_classes"] == []
    modified = tmp_path / "fork.pkl"
    write_snapshot(
        modified, edm_modules, net, edm_kwargs, source=KNOWN_SRC + "\n# in forward: D_x = 0 * D_x\n"
    )
    with pytest.raises(ValueError) as info:
        load_edm_pickle(modified)
    message = str(info.value)
    assert "fork.pkl: the network class 'EDMPrecond' is not EDM's released code" in message
    assert "teacher.allow_modified_edm_source: true" in message
    _, found = read_network(modified, allow_modified_source=True)
    assert found["stored_source"].startswith("modified") and "EDMPrecond" in found["modified_classes"]
    cfg = _cfg_for(smoke_cfg, edm_kwargs)
    with pytest.raises(ValueError, match="allow_modified_edm_source"):
        import_edm_pickle(str(modified), None, str(tmp_path / "d.pkl"), str(tmp_path / "refused.pt"), cfg)
    assert not (tmp_path / "refused.pt").exists()
    cfg["teacher"]["allow_modified_edm_source"] = True
    import_edm_pickle(str(modified), None, str(tmp_path / "d.pkl"), str(tmp_path / "t.pt"), cfg)
    stats = teacher_stats(str(tmp_path / "t.pt"))
    assert stats["stored_source"].startswith("modified")
    assert "MODIFIED network source (" in describe_origin(stats)  # the report's provenance line
    import_edm_pickle(str(known), None, str(tmp_path / "k.pkl"), str(tmp_path / "k.pt"), cfg)
    assert "this suite's network source" in describe_origin(teacher_stats(str(tmp_path / "k.pt")))
    assert describe_origin({}) == "trained by this suite (teacher.source: train)"
    # one class with no stored source at all is refused the same way
    fn, _ = edm_modules
    ema = edm_layout(net, fn, edm_kwargs)
    ema.meta["state"]["_modules"]["model"].meta["module_src"] = None
    bare = tmp_path / "bare.pkl"
    write_snapshot(bare, edm_modules, net, edm_kwargs, {"ema": ema})
    with pytest.raises(ValueError, match="'SongUNet' is not EDM's released code \\(no source is stored"):
        load_edm_pickle(bare)


def test_released_edm_sources_are_known_by_digest(monkeypatch):
    """The digests of EDM's training/networks.py (both released versions) are listed with
    their commits; a source whose digest is listed is accepted, any other is not."""
    from hkd.teacher import edm_sources

    released = {d: o for d, o in edm_sources.KNOWN_SOURCES.items() if o.startswith("released EDM")}
    assert len(released) == 2 and all(len(d) == 64 for d in released)
    assert any("0a2ff34" in o for o in released.values()) and any("b2a26c9" in o for o in released.values())
    stand_in = "# a stand-in for a released networks.py\n"
    assert edm_sources.source_origin(edm_sources.source_digest(stand_in)) is None
    monkeypatch.setitem(edm_sources.KNOWN_SOURCES, edm_sources.source_digest(stand_in), "released EDM: test")
    assert edm_sources.source_origin(edm_sources.source_digest(stand_in)) == "released EDM: test"
    assert edm_sources.source_origin(edm_sources.source_digest(KNOWN_SRC)) is not None


def _refusal(path) -> str:
    with pytest.raises(ValueError) as info:
        load_edm_pickle(path)
    message = str(info.value)
    assert "\x1b" not in message and "weights_only" not in message and "\n" not in message, message
    return message


def test_hostile_files_are_named_without_unsafe_advice(tmp_path, edm_modules):
    """A nested torch payload carrying os.system names the refused global, never torch's
    advice to load with weights_only=False; a protocol-0 pickle is named as a pickle with
    what it imports; a top-level EvilNet record is 'an EvilNet'."""
    import io
    import os

    fn, _ = edm_modules

    class System:
        def __reduce__(self):
            return (os.system, (f"touch {MARKER}",))

    payload = io.BytesIO()
    torch.save(System(), payload)

    class Nested:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (payload.getvalue(),))

    net, edm_kwargs = small_precond()
    nested = tmp_path / "nested.pkl"
    write_snapshot(nested, edm_modules, net, edm_kwargs, {"augment_pipe": Nested()})
    message = _refusal(nested)
    assert "nested.pkl: refusing a nested torch payload" in message
    assert re.search(r"(posix|os)\.system", message), message
    old = tmp_path / "protocol0.pkl"
    old.write_bytes(pickle.dumps(System(), protocol=0))
    message = _refusal(old)
    assert "a pickle of protocol 0 or 1" in message and re.search(r"imports (posix|os)\.system", message)
    assert "text file" not in message
    evil = tmp_path / "evil-net.pkl"
    with open(evil, "wb") as f:
        pickle.dump(Persistent(fn, "EvilNet", {}), f)
    assert "it holds an EvilNet, not a training snapshot dict" in _refusal(evil)
    assert not os.path.exists(MARKER)


def test_torch_load_problem_keeps_the_refused_global_only():
    """torch's weights-only refusal as one line: the refused global, no ANSI codes, no advice."""
    from hkd.io import torch_load_problem

    exc = pickle.UnpicklingError(
        "Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` will likely "
        "succeed, but it can result in arbitrary code execution.\n\n\x1b[1mTrying to load unsupported "
        "GLOBAL posix.system whose module posix is blocked.\x1b[0m\n\nCheck the documentation of torch.load"
    )
    assert torch_load_problem(exc) == (
        "UnpicklingError: Trying to load unsupported GLOBAL posix.system whose module posix is blocked."
    )
    assert torch_load_problem(RuntimeError("PytorchStreamReader failed reading zip archive")) == (
        "RuntimeError: PytorchStreamReader failed reading zip archive"
    )
