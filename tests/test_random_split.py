"""Figures 4 and 5 against random splits of the modes (analysis.random_split) and the
order the bands are cut from (analysis.band_by)."""

import math

import pytest
import torch
from test_analysis import noise_for, small_hkd

from hkd.analysis.editing import spatial_mask
from hkd.analysis.modes import band_masks, mode_ranks, random_ranks
from hkd.analysis.random_split import _placed, band_roles_control, edit_control, high_frequency_share


def test_bands_follow_abs_alpha_by_default_and_signed_alpha_on_request(smoke_cfg):
    model = small_hkd(smoke_cfg)
    with torch.no_grad():
        model.koopman.alpha[0].copy_(
            torch.linspace(-3, 1, model.koopman.alpha[0].numel()).reshape(model.koopman.alpha[0].shape)
        )
    alpha = model.koopman.alpha[0].detach()
    by_abs, by_sign = mode_ranks(model)[0], mode_ranks(model, "alpha")[0]
    assert (
        by_abs.flatten()[alpha.abs().flatten().argmin()] == 0
        and by_sign.flatten()[alpha.flatten().argmin()] == 0
    )
    largest_abs = band_masks(model, 2 / 3, 1.0)[0]
    assert alpha[largest_abs.bool()].min() < -2  # the most negative alphas have the largest |alpha|
    with pytest.raises(ValueError, match="band order"):
        mode_ranks(model, "beta")


def test_random_bands_have_the_spectrums_sizes_and_differ_between_draws(smoke_cfg):
    model = small_hkd(smoke_cfg)
    gen = torch.Generator().manual_seed(0)
    one, two = random_ranks(model, gen), random_ranks(model, gen)
    for lo, hi in [(0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)]:
        for a, b in zip(band_masks(model, lo, hi), band_masks(model, lo, hi, one)):
            assert a.sum() == b.sum()
    assert not torch.equal(one[0], two[0])


def test_high_frequency_share_tells_smooth_from_checkered_images():
    y, x = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    smooth = torch.sin(2 * math.pi * x / 16.0)[None, None].float()
    checkered = ((x + y) % 2 * 2 - 1)[None, None].float()
    assert high_frequency_share(smooth) < 0.01 and high_frequency_share(checkered) > 0.99


def test_a_value_is_placed_in_the_random_draws():
    draws = [float(i) for i in range(100)]
    assert _placed(-1.0, draws)["below_random"] and not _placed(-1.0, draws)["above_random"]
    assert _placed(120.0, draws)["above_random"]
    mid = _placed(50.0, draws)
    assert not mid["below_random"] and not mid["above_random"] and mid["draws"] == 100


def test_the_controls_run_on_figure_inputs_and_a_random_order_is_not_special(smoke_cfg):
    model = small_hkd(smoke_cfg)
    noise = noise_for(model, 2)
    edges = [0.0, 1 / 3, 2 / 3, 1.0]
    roles = band_roles_control(model, noise, edges, None, mode_ranks(model), seed=0, draws=8)
    assert len(roles["band_shares"]) == 3 and roles["separation"]["draws"] == 8
    assert all(0 <= s <= 1 for s in roles["band_shares"])
    gen, ref = {"noise": noise[:1]}, {"noise": noise[1:]}
    mask = spatial_mask("lower_left", model.img_resolution)
    ranks = random_ranks(model, torch.Generator().manual_seed(11))
    out = edit_control(model, gen, ref, (2 / 3, 1.0), mask, 0.9, None, None, ranks, seed=0, draws=8)
    change = out["rms_change"]
    assert change["value"] > 0 and change["random_q05"] <= change["random_mean"] <= change["random_q95"]
