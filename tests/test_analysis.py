"""The figures' numerical checks (issue: interpretability and editing): each is a property
that a wrong implementation breaks."""

import numpy as np
import pytest
import torch

from hkd.analysis.editing import editing_grid, spatial_mask
from hkd.analysis.inpainting import Transform, restore
from hkd.analysis.modes import (
    band_decodes,
    band_masks,
    bands_partition,
    cumulative_contribution,
    features_at,
    to_eps,
)
from hkd.analysis.trajectory import consistency, consistency_check, predictions_along
from hkd.koopman.model import HKD, hkd_checkpoint
from hkd.nn.precond import EDMPrecond
from hkd.teacher.network import teacher_kwargs


def small_hkd(cfg, channels=None, label_dim=0, seed=0):
    """A teacher-initialised HKD of the smoke network with random Koopman generators, so
    that every band holds different modes."""
    torch.manual_seed(seed)
    kw = teacher_kwargs(cfg)
    if channels:
        kw["img_channels"] = channels
    kw["label_dim"] = label_dim
    teacher = EDMPrecond(**kw).eval()
    with torch.no_grad():  # EDM zero-initialises output layers: make the network do something
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = HKD(teacher, eps=cfg["edm"]["sigma_min"], sigma_max=cfg["edm"]["sigma_max"]).eval()
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.02)
            b.normal_(0, 0.05)
    return model.requires_grad_(False)


def noise_for(model, n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.img_channels, model.img_resolution, model.img_resolution, generator=g)


def test_bands_partition_the_modes_and_all_bands_give_the_unmasked_decode(smoke_cfg):
    model = small_hkd(smoke_cfg)
    edges = [0.0, 0.25, 0.7, 1.0]
    masks = [band_masks(model, lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]
    for level, (alpha, _) in enumerate(model.koopman.eigenvalues()):
        per_band = torch.stack([m[level] for m in masks])
        assert torch.equal(per_band.sum(0), torch.ones_like(alpha))  # each pair in exactly one band
        # the band of smaller |alpha| (the default order) holds smaller |alpha|
        lo_max = alpha.abs()[per_band[0].bool()].max()
        hi_min = alpha.abs()[per_band[2].bool()].min()
        assert lo_max <= hi_min
        assert abs(per_band[0].mean().item() - 0.25) < 0.01
    noise = noise_for(model)
    d = band_decodes(model, noise, [0.0, 1.0])
    assert torch.equal(d["band0"], d["all"])
    assert torch.equal(d["all"], model.decode(features_at(model, noise, model.eps)))
    split = band_decodes(model, noise, edges)
    assert not torch.equal(split["band0"], split["all"])  # keeping one band is not the full decode
    assert bands_partition(model, edges) and bands_partition(model, [0.0, 1.0])
    with pytest.raises(ValueError, match="band"):
        band_masks(model, 0.5, 0.5)


def test_cumulative_contribution_runs_from_zero_to_one(smoke_cfg):
    model = small_hkd(smoke_cfg)
    c = cumulative_contribution(model, noise_for(model), 4, [80.0, 1.0, 0.002])
    assert c.shape == (5, 3)
    assert torch.equal(c[0], torch.zeros(3)) and torch.equal(c[-1], torch.ones(3))
    assert torch.isfinite(c).all()


def test_editing_at_ratio_zero_is_the_unedited_image_and_full_mix_is_the_reference(smoke_cfg):
    model = small_hkd(smoke_cfg)
    noise = noise_for(model, 4)
    gen, ref = {"noise": noise[:2]}, {"noise": noise[2:]}
    res = model.img_resolution
    out = editing_grid(model, gen, ref, (0.0, 1.0), spatial_mask("all", res), [0.5, 1.0], 1.0)
    assert out["ratio0_equals_unedited"] and out["full_mix_max_abs_diff_to_reference"] < 1e-4
    assert np.abs(out["edits"][1] - out["reference"]).max() < 1e-4  # every mode, everywhere, fully mixed
    assert out["one_step_max_abs_diff"] < 1e-3  # T -> midpoint -> eps is the one-step sample up to rounding
    part = editing_grid(model, gen, ref, (2 / 3, 1.0), spatial_mask("lower_left", res), [0.9], 0.9)
    assert part["ratio0_equals_unedited"]
    assert np.abs(part["edits"][0] - part["generated"]).max() > 0  # the edit changes something
    assert not np.allclose(part["edits"][0], part["agnostic"])  # one band is not every mode
    # an image reference enters at the midpoint with noise
    img = {"image": torch.zeros(2, model.img_channels, res, res), "seed": 3}
    assert editing_grid(model, gen, img, (0.0, 1.0), spatial_mask("centre", res), [0.5], 0.9)[
        "ratio0_equals_unedited"
    ]
    with pytest.raises(ValueError, match="unknown mask"):
        spatial_mask("middle", res)


def test_conditional_edit_encodes_the_reference_with_its_own_label(smoke_cfg):
    model = small_hkd(smoke_cfg, label_dim=10)
    noise = noise_for(model, 2)
    gen_l = torch.nn.functional.one_hot(torch.tensor([3]), 10).float()
    ref_l = torch.nn.functional.one_hot(torch.tensor([7]), 10).float()
    res = model.img_resolution
    out = editing_grid(
        model,
        {"noise": noise[:1]},
        {"noise": noise[1:]},
        (0.0, 1.0),
        spatial_mask("all", res),
        [0.5],
        0.9,
        gen_l,
        ref_l,
    )
    own = model.sample(noise[1:], ref_l).numpy()
    other = model.sample(noise[1:], gen_l).numpy()
    assert np.abs(out["reference"] - own).max() < 1e-3 and np.abs(out["reference"] - other).max() > 1e-2
    assert out["full_mix_max_abs_diff_to_reference"] < 1e-3 and out["ratio0_equals_unedited"]


def test_mixing_commutes_with_the_flow(smoke_cfg):
    """Why the midpoint is not special for HKD: a per-mode mask commutes with the per-mode
    linear flow, so mixing at s and then evolving equals evolving and then mixing."""
    model = small_hkd(smoke_cfg)
    s = 40.0
    a, b = features_at(model, noise_for(model, 1, 1), s), features_at(model, noise_for(model, 1, 2), s)
    masks = band_masks(model, 0.3, 0.8)
    from hkd.analysis.modes import apply_pair_masks

    mixed_then_evolved = to_eps(
        model, [x + 0.7 * d for x, d in zip(a, apply_pair_masks([y - x for x, y in zip(a, b)], masks))], s
    )
    ae, be = to_eps(model, a, s), to_eps(model, b, s)
    evolved_then_mixed = [
        x + 0.7 * d for x, d in zip(ae, apply_pair_masks([y - x for x, y in zip(ae, be)], masks))
    ]
    for u, v in zip(mixed_then_evolved, evolved_then_mixed):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("task,channels", [("inpaint", 1), ("upsample", 1), ("colourise", 3), ("inpaint", 3)])
def test_restoration_keeps_the_known_part(smoke_cfg, task, channels):
    model = small_hkd(smoke_cfg, channels=channels)
    res = model.img_resolution
    tf = Transform(task, (channels, res, res), "lower_half")
    x = torch.rand(3, channels, res, res) * 2 - 1
    torch.testing.assert_close(tf.inverse(tf.forward(x)), x, rtol=0, atol=1e-5)  # orthonormal A
    y = torch.rand(2, channels, res, res) * 2 - 1
    out = restore(model, y, tf, steps=4, rho=7.0, seed=0)
    assert out.shape == y.shape and torch.isfinite(out).all()
    err = tf.known_error(out, y)
    if task == "inpaint":
        assert err == 0.0
        known = (1 - tf.omega).bool()
        assert torch.equal(out[:, known], y[:, known])  # the known pixels are the reference's exactly
        assert not torch.equal(out, y)  # the unknown ones are generated
    else:
        assert err < 1e-5
    again = restore(model, y, tf, steps=4, rho=7.0, seed=0)
    assert torch.equal(out, again)  # seeded


def test_colourisation_needs_colour(smoke_cfg):
    with pytest.raises(ValueError, match="colourisation needs RGB"):
        Transform("colourise", (1, 32, 32))


def test_consistency_distance_and_check():
    sigmas = torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0])
    final = torch.rand(2, 1, 4, 4)
    states = torch.stack([final + s * torch.randn(2, 1, 4, 4) for s in sigmas])
    states[-1] = final
    # a model that returns its input: the distance is the noise left, large at T, small near eps
    d = consistency(predictions_along(lambda x, t: x, sigmas, states), final)
    check = consistency_check(d)
    assert (
        check["small_near_eps"]
        and check["grows_with_t"]
        and check["spearman_t_vs_distance"] == pytest.approx(1.0)
    )
    # a perfect model: every column is the final image
    d = consistency(predictions_along(lambda x, t: final, sigmas, states), final)
    assert np.allclose(d, 0.0)
    # a model worse near eps fails the check
    bad = consistency_check(np.array([0.1, 0.2, 0.3, 0.4]))
    assert not bad["small_near_eps"] and not bad["grows_with_t"]


def test_edit_command_from_seeds_and_images(smoke_cfg, repo, tmp_path, monkeypatch, capsys):
    import shutil

    from PIL import Image

    from hkd.cli import main

    model = small_hkd(smoke_cfg)
    ckpt = hkd_checkpoint(model, teacher_kwargs(smoke_cfg))
    monkeypatch.chdir(tmp_path)
    hkd_path = tmp_path / "results" / smoke_cfg["run"] / "hkd" / "hkd.pt"
    hkd_path.parent.mkdir(parents=True)
    torch.save(ckpt, hkd_path)
    (tmp_path / "configs").mkdir()
    shutil.copy(repo / "configs" / "smoke.yaml", tmp_path / "configs" / "smoke.yaml")
    base = ["edit", "--config", "configs/smoke.yaml"]

    assert main(base + ["--seeds", "1000000", "1000001", "--out", "seeds.png"]) == 0
    assert '"ratio0_equals_unedited": true' in capsys.readouterr().out
    assert Image.open("seeds.png").size[0] > 100

    res = model.img_resolution
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (res, res), dtype=np.uint8)).save(name)
    mask = np.zeros((res, res), np.uint8)
    mask[: res // 2] = 255
    Image.fromarray(mask).save("mask.png")
    assert (
        main(
            base
            + [
                "--images",
                "a.png",
                "b.png",
                "--mask",
                "mask.png",
                "--band",
                "0",
                "--ratios",
                "0.3",
                "--out",
                "images.png",
            ]
        )
        == 0
    )
    assert "mask image mask.png" in capsys.readouterr().out

    Image.fromarray(np.zeros((res + 4, res + 4), np.uint8)).save("big.png")
    for args, message in (
        (["--images", "a.png", "big.png"], "the model generates"),
        (["--seeds", "1", "2", "--band", "3"], "--band 3"),
        (["--seeds", "1", "2", "--mask", "nowhere"], "neither one of"),
        (["--seeds", "1", "2", "--ratios", "1.5"], "--ratios"),
        (["--images", "a.png", "missing.png"], "cannot read image missing.png"),
    ):
        assert main(base + args + ["--out", "x.png"]) == 1, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "x.png").exists()


def test_figures_stage_writes_every_figure_and_its_checks(smoke_cfg, tmp_path):
    """make_figures, one function per figure: every output written, figures.json holds each
    figure's numbers, the stage summary its exactness checks (true for any network)."""
    import copy
    import json

    from PIL import Image

    from hkd.analysis.figures import make_figures
    from hkd.io import load_npz, save_npz
    from hkd.pipeline import FIGURES

    cfg = copy.deepcopy(smoke_cfg)
    cfg["analysis"]["seeds"] = 1
    cfg["trajectories"]["num_steps"] = 3
    cfg["analysis"]["inpaint"].update(images=1, steps=2)
    model = small_hkd(cfg)
    torch.manual_seed(1)
    teacher = EDMPrecond(**teacher_kwargs(cfg)).eval()
    rng = np.random.default_rng(0)
    split = {
        f"{s}_images": rng.integers(0, 256, (n, 1, 32, 32), dtype=np.uint8)
        for s, n in (("train", 6), ("heldout", 3))
    }
    save_npz(tmp_path / "data.npz", **split, train_labels=np.full(6, -1), heldout_labels=np.full(3, -1))
    suffix = {"figures": "json", "viewer": "npz"}
    paths = {k: str(tmp_path / f"{k}.{suffix.get(k, 'png')}") for k in FIGURES} | {
        "data": str(tmp_path / "data.npz")
    }

    summary = make_figures(cfg, paths, teacher, model, torch.device("cpu"), torch.bfloat16)
    numbers = json.loads((tmp_path / "figures.json").read_text())
    assert set(numbers) == {"seeds", "figure2", "figure4", "figure5", "figure6"}
    assert summary == {
        "figure2": numbers["figure2"]["small_near_eps"],
        "figure4": True,
        "figure5": True,
        "figure6": {"inpaint": True, "upsample": True},
    }
    assert len(numbers["figure2"]["distance"]) == 3 and numbers["figure6"]["split"] == "heldout"
    for key in FIGURES:
        if key not in suffix:
            assert Image.open(paths[key]).size[0] > 100, key
    viewer = load_npz(paths["viewer"])
    assert viewer["frames"].shape == (3, 3, 1, 1, 32, 32) and viewer["frames"].dtype == np.uint8
    assert len(viewer["sigmas"]) == 3 and list(viewer["seeds"]) == numbers["seeds"]
