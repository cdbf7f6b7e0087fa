"""The optimisation levers of HKD training (config keys hkd.decoder, hkd.time_sampling,
hkd.distance, hkd.trajectory_weight, hkd.koopman_time_unit): each one does what its
description says, and the paper's reading stays available."""

import math

import pytest
import torch

from hkd.config import ConfigError, validate_config
from hkd.koopman.diagnostics import koopman_exponents
from hkd.koopman.model import HKD, boundary_coefficients, build_hkd
from hkd.nn.precond import EDMPrecond, edm_coefficients
from hkd.teacher.sampler import edm_sigmas
from hkd.train.objective import distance, pseudo_huber_c, sample_times, time_weights

EPS, T = 0.002, 80.0


def small_teacher() -> EDMPrecond:
    """A teacher whose raw output is far from zero (EDM zero-initialises no layer here, but
    random weights make the check meaningful at every pixel)."""
    torch.manual_seed(0)
    teacher = EDMPrecond(16, 1, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8])
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return teacher.eval()


def test_sigma_max_decoder_starts_at_the_teachers_denoiser():
    teacher = small_teacher()
    model = HKD(teacher, EPS, T, decoder="sigma_max").eval()
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    x_T = noise * T
    c_skip = edm_coefficients(torch.tensor(T), 0.5)[0]
    with torch.no_grad():
        expected = teacher(x_T, torch.full((3,), T)) - c_skip * x_T  # D(x_T; T) without its skip term
        got = model.sample(noise)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert got.abs().mean() > 1e-2  # not a trivial zero


def test_paper_decoder_is_not_the_teacher_at_step_0():
    """The paper's reading decodes at sigma = eps: a different function at step 0."""
    teacher = small_teacher()
    noise = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        paper = HKD(teacher, EPS, T, decoder="paper").eval().sample(noise)
        sigma_max = HKD(teacher, EPS, T, decoder="sigma_max").eval().sample(noise)
    assert (paper - sigma_max).abs().max() > 1e-3


def test_boundary_decoder_is_the_identity_at_eps_and_the_teacher_network_at_step_0():
    teacher = small_teacher()
    model = HKD(teacher, EPS, T, decoder="boundary").eval()
    x = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(x, torch.full((2,), EPS)), x)  # c_skip(eps) = 1, c_out(eps) = 0
        t = torch.tensor([3.0, 0.5])
        sigma = t.reshape(-1, 1, 1, 1)
        _, _, c_in, c_noise = edm_coefficients(sigma, 0.5)
        F = teacher.model(c_in * x * sigma, c_noise.flatten())
        c_skip, c_out = boundary_coefficients(sigma, EPS, 0.5)
        torch.testing.assert_close(model(x * sigma, t), c_skip * x * sigma + c_out * F, rtol=1e-4, atol=1e-5)


def test_boundary_decoder_needs_its_source():
    model = HKD(small_teacher(), EPS, T, decoder="boundary")
    feats = model.encode(torch.zeros(1, 1, 16, 16), torch.tensor([T]))
    with pytest.raises(ValueError, match="source"):
        model.decode(feats)


def test_decoder_kind_is_checked_and_kept_in_the_checkpoint_arguments():
    with pytest.raises(ValueError, match="decoder"):
        HKD(small_teacher(), EPS, T, decoder="identity")
    assert HKD(small_teacher(), EPS, T, decoder="boundary").init_kwargs["decoder"] == "boundary"


def test_build_hkd_reads_every_lever_of_the_config(smoke_cfg):
    cfg = {**smoke_cfg, "hkd": {**smoke_cfg["hkd"], "decoder": "sigma_max", "koopman_time_unit": 80.0}}
    model = build_hkd(small_teacher(), cfg)
    assert model.decoder == "sigma_max" and model.time_unit == 80.0


def test_grid_index_times_are_stored_grid_states_between_T_and_eps():
    sigmas = edm_sigmas(18, EPS, T, 7.0)
    grid = sigmas[:-1]
    t = sample_times(2000, 4, sigmas, torch.Generator().manual_seed(0), "grid_index")
    assert torch.all(t[:, 0] == T)
    mid = t[:, 1:].flatten()
    assert torch.isin(mid, grid[1:-1]).all()  # only stored states, never T or eps itself
    assert set(mid.tolist()) == set(grid[1:-1].tolist())  # every one of them drawn
    # uniform over indices: the share above sigma = 19.4 is ~4/16, not the 75 % of uniform-in-sigma
    assert 0.15 < float((mid > 19.0).double().mean()) < 0.34


def test_uniform_sigma_and_lognormal_times():
    sigmas = edm_sigmas(18, EPS, T, 7.0)
    gen = torch.Generator().manual_seed(0)
    uniform = sample_times(4000, 4, sigmas, gen, "uniform_sigma")[:, 1:]
    assert 0.7 < float((uniform > 19.4).double().mean()) < 0.8
    logn = sample_times(4000, 4, sigmas, gen, "lognormal", (-1.2, 1.2))[:, 1:]
    assert torch.all((logn >= EPS) & (logn < T))
    assert abs(float(logn.log().median()) + 1.2) < 0.1  # EDM's P_mean
    with pytest.raises(ValueError, match="time_sampling"):
        sample_times(2, 1, sigmas, gen, "beta")


def test_pseudo_huber_distance_matches_its_definition():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, 1, 8, 8, generator=gen), torch.randn(5, 3, 1, 8, 8, generator=gen)
    mse = (x - y).square().flatten(2).mean(2)
    dims = 64
    c = 0.00054 * math.sqrt(dims)
    assert pseudo_huber_c(dims, None) == pytest.approx(c)
    expected = ((x - y).square().flatten(2).sum(2) + c * c).sqrt() - c
    torch.testing.assert_close(distance(mse, dims, "pseudo_huber"), expected)
    torch.testing.assert_close(
        distance(mse, dims, "pseudo_huber", 0.5), ((x - y).square().flatten(2).sum(2) + 0.25).sqrt() - 0.5
    )
    assert torch.equal(distance(mse, dims, "mse"), mse)
    small = distance(torch.tensor([1e-10]), dims, "pseudo_huber")
    assert float(small) == pytest.approx(1e-10 * dims / (2 * c), rel=1e-3)  # quadratic near 0


def test_trajectory_weight_scales_only_the_intermediate_terms():
    assert time_weights(4, 1.0).tolist() == [1.0] * 5  # the paper's plain sum
    assert time_weights(4, 0.25).tolist() == [1.0, 0.25, 0.25, 0.25, 0.25]
    assert time_weights(0, 0.25).tolist() == [1.0]


def test_koopman_exponents_report_the_spread_of_the_one_step_flow():
    model = HKD(small_teacher(), EPS, T, time_unit=80.0)
    with torch.no_grad():
        model.koopman.alpha[0].copy_(
            torch.linspace(-1, 1, model.koopman.alpha[0].numel()).reshape(model.koopman.alpha[0].shape)
        )
    stats = koopman_exponents(model)
    span = (T - EPS) / 80.0
    a = stats["alpha_dt_level0"]
    assert a["mean"] == pytest.approx(0.0, abs=1e-6)
    assert a["q05"] == pytest.approx(-0.9 * span, abs=0.02) and a["q95"] == pytest.approx(
        0.9 * span, abs=0.02
    )
    assert a["std"] > 0.5
    assert stats["beta_dt_level0"]["std"] == 0.0 and stats["alpha_dt_level1"]["std"] == 0.0


@pytest.mark.parametrize(
    "key,value",
    [
        ("decoder", "identity"),
        ("time_sampling", "uniform"),
        ("distance", "l1"),
        ("trajectory_weight", -1),
        ("pseudo_huber_c", 0),
    ],
)
def test_config_rejects_bad_lever_values_naming_the_key(smoke_cfg, key, value):
    cfg = {**smoke_cfg, "hkd": {**smoke_cfg["hkd"], key: value}}
    with pytest.raises(ConfigError, match=f"hkd.{key}"):
        validate_config(cfg)


def test_figures_decode_the_boundary_parametrisation_from_their_source():
    """Figures 4 and 5 decode evolved features: with the boundary decoder they pass the input
    the features came from, so the unmasked decode is the one-step sample and a full mix of
    the reference's modes gives the reference."""
    from hkd.analysis.editing import editing_grid, spatial_mask
    from hkd.analysis.modes import band_decodes

    model = HKD(small_teacher(), EPS, T, decoder="boundary").eval()
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.01), b.normal_(0, 0.05)
    gen = torch.Generator().manual_seed(3)
    noise, ref = torch.randn(2, 1, 16, 16, generator=gen), torch.randn(2, 1, 16, 16, generator=gen)
    with torch.no_grad():
        d = band_decodes(model, noise, [0.0, 0.5, 1.0])
        torch.testing.assert_close(d["all"], model.sample(noise))
        out = editing_grid(
            model,
            {"noise": noise},
            {"noise": ref},
            (0.5, 1.0),
            spatial_mask("lower_left", 16),
            [0.5, 0.9],
            0.9,
        )
    assert out["ratio0_equals_unedited"] and out["full_mix_max_abs_diff_to_reference"] < 1e-3
    assert out["one_step_max_abs_diff"] < 1e-4
    assert len(out["band_edit_rms_change"]) == 2 and len(out["agnostic_edit_rms_change"]) == 2
