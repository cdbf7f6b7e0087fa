import torch

from hkd.nn.precond import EDMPrecond, edm_coefficients
from hkd.nn.unet import SongUNet


def tiny_unet(**kw):
    args = dict(
        img_resolution=16,
        in_channels=1,
        out_channels=1,
        model_channels=8,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
        dropout=0.0,
    )
    args.update(kw)
    return SongUNet(**args)


def test_edm_parameter_names():
    """Names as in EDM's SongUNet, so EDM snapshots map onto this module by name."""
    net = tiny_unet()
    names = set(net.state_dict())
    for expected in (
        "map_layer0.weight",
        "map_layer1.bias",
        "enc.16x16_conv.weight",
        "enc.16x16_block0.conv0.weight",
        "enc.8x8_down.skip.resample_filter",
        "enc.8x8_block0.qkv.weight",
        "dec.8x8_in0.proj.weight",
        "dec.8x8_in1.affine.weight",
        "dec.16x16_up.conv0.resample_filter",
        "dec.16x16_aux_norm.weight",
        "dec.16x16_aux_conv.weight",
    ):
        assert expected in names, expected
    # modules in EDM's order (each draws its initial weights from the global RNG in turn)
    cond = tiny_unet(label_dim=10, augment_dim=9)
    assert [n for n, _ in cond.named_children()] == [
        "map_noise",
        "map_label",
        "map_augment",
        "map_layer0",
        "map_layer1",
        "enc",
        "dec",
    ]


def test_encode_decode_equals_forward():
    torch.manual_seed(0)
    net = tiny_unet().eval()
    x, noise = torch.randn(3, 1, 16, 16), torch.randn(3)
    emb = net.embed(noise)
    skips = net.encode(x, emb)
    assert len(skips) == len(net.skip_channels) == len(net.skip_resolutions)
    for s, c, r in zip(skips, net.skip_channels, net.skip_resolutions):
        assert s.shape[1:] == (c, r, r)
    torch.testing.assert_close(net.decode(skips, emb), net(x, noise))


def test_precond_limits():
    sigma = torch.tensor([1e-3, 1e3])
    c_skip, c_out, c_in, _ = edm_coefficients(sigma, 0.5)
    assert abs(c_skip[0] - 1) < 1e-4 and c_skip[1] < 1e-6
    assert abs(c_out[1] - 0.5) < 1e-4 and c_in[1] < 2e-3
    net = EDMPrecond(16, 1, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    x = torch.randn(2, 1, 16, 16)
    assert net(x, torch.tensor(1.0)).shape == x.shape
    assert net.init_kwargs["model_channels"] == 8


def test_conditional_teacher_starts_as_the_unconditional_one(tmp_path):
    import pytest

    from hkd.teacher.network import save_teacher, start_from_unconditional

    kwargs = dict(
        img_resolution=16,
        img_channels=1,
        model_channels=8,
        channel_mult=[1, 2],
        num_blocks=1,
        attn_resolutions=[8],
    )
    torch.manual_seed(0)
    plain = EDMPrecond(label_dim=0, **kwargs).eval()
    save_teacher(plain, tmp_path / "plain.pt")
    cond = EDMPrecond(label_dim=10, **kwargs).eval()
    start_from_unconditional(cond, str(tmp_path / "plain.pt"))
    x, sigma = torch.randn(4, 1, 16, 16), torch.tensor([0.1, 1.0, 5.0, 80.0])
    with torch.no_grad():
        expected = plain(x, sigma)
        for label in (0, 7):
            onehot = torch.nn.functional.one_hot(torch.full((4,), label), 10).float()
            assert torch.equal(cond(x, sigma, onehot), expected)
    assert cond.model.map_label.weight.abs().sum() == 0
    other = EDMPrecond(label_dim=10, **{**kwargs, "model_channels": 16})
    with pytest.raises(ValueError, match="plain.pt"):
        start_from_unconditional(other, str(tmp_path / "plain.pt"))
