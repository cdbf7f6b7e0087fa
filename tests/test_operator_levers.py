"""The levers that give the Koopman operators a way to learn (config keys
hkd.operator_param, hkd.operator_init, hkd.operator_lr, hkd.network_sigma,
hkd.prediction_weight) and the zeroed-operator control: each does what its description
says, and the paper's reading stays the default of every one."""

import copy
import math

import pytest
import torch
from test_levers import EPS, T, small_teacher

from hkd.config import ConfigError, validate_config
from hkd.koopman.diagnostics import koopman_exponents
from hkd.koopman.model import HKD, build_hkd, operators_off
from hkd.koopman.operators import RING_ANGLE, RING_LOG_GAIN, KoopmanOperators
from hkd.nn.precond import edm_coefficients
from hkd.pipeline import PAPER_LEVERS, effective_hkd
from hkd.teacher.sampler import edm_sigmas
from hkd.train.hkd_train import hkd_distances, parameter_groups
from hkd.train.objective import prediction_times, sample_times

SPAN = (T - EPS) / 80.0  # |dt| of the flow T -> eps at time unit 80


@pytest.mark.parametrize("param", ["linear", "log"])
def test_ring_init_gains_and_angles_lie_in_the_stated_ring(param):
    ops = KoopmanOperators([8, 16], [4, 2], param=param, init="ring", span=SPAN, seed=3)
    for alpha, beta in ops.eigenvalues():
        gain, angle = alpha * SPAN, beta * SPAN
        assert RING_LOG_GAIN[0] - 1e-6 <= gain.min() and gain.max() <= RING_LOG_GAIN[1] + 1e-6
        assert RING_ANGLE[0] - 1e-6 <= angle.min() and angle.max() <= RING_ANGLE[1] + 1e-6
        assert gain.std() > 0.05 and angle.std() > 0.05  # positions start apart, not at one value
    other = KoopmanOperators([8, 16], [4, 2], param=param, init="ring", span=SPAN, seed=4)
    assert not torch.equal(ops.eigenvalues()[0][0], other.eigenvalues()[0][0])  # seeds differ


def test_log_parametrisation_keeps_rates_positive_and_trains_the_logs():
    ops = KoopmanOperators([4], [2], param="log", init="ring", span=SPAN)
    assert [n for n, _ in ops.named_parameters()] == ["log_alpha.0", "log_beta.0"]
    with torch.no_grad():
        ops.log_alpha[0].fill_(-50.0)  # however far a step moves nu, alpha stays >= 0
    alpha, beta = ops.rates(0)
    assert (alpha >= 0).all() and (beta > 0).all()
    z = torch.randn(3, 4, 2, 2)
    ops.evolve([z], torch.full((3,), -SPAN))[0].square().sum().backward()
    assert ops.log_beta[0].grad.abs().sum() > 0
    with pytest.raises(ValueError, match="ring"):
        KoopmanOperators([4], [2], param="log", init="zero")


def test_zero_init_is_the_papers_identity_start():
    model = HKD(small_teacher(), EPS, T)
    assert all((a == 0).all() and (b == 0).all() for a, b in model.koopman.eigenvalues())


def _lever_cfg(smoke_cfg, **levers):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["hkd"].update(levers)
    return cfg


def test_the_paper_reading_is_every_lever_default(smoke_cfg):
    for key in ("operator_param", "operator_init", "operator_lr", "network_sigma", "prediction_weight"):
        assert key in PAPER_LEVERS
    assert PAPER_LEVERS["operator_lr"] is None and PAPER_LEVERS["prediction_weight"] == 0.0


@pytest.mark.parametrize(
    "levers,message",
    [
        ({"operator_param": "log", "operator_init": "zero"}, "operator_init 'ring'"),
        ({"prediction_weight": 0.5, "decoder": "paper"}, "decoder 'boundary'"),
        ({"operator_param": "exp"}, "hkd.operator_param"),
        ({"network_sigma": "eps"}, "hkd.network_sigma"),
        ({"operator_lr": 0}, "hkd.operator_lr"),
        ({"prediction_weight": -1}, "hkd.prediction_weight"),
    ],
)
def test_config_rejects_levers_that_cannot_train(smoke_cfg, levers, message):
    with pytest.raises(ConfigError, match=message):
        validate_config(_lever_cfg(smoke_cfg, **levers))


def test_a_study_recipe_is_checked_on_top_of_the_papers_levers(smoke_cfg):
    cfg = copy.deepcopy(smoke_cfg)
    cfg["study"]["recipes"] = {"log_only": {"operator_param": "log"}}
    with pytest.raises(ConfigError, match="study.recipes.log_only"):
        validate_config(cfg)
    cfg["study"]["recipes"] = {"log_ring": {"operator_param": "log", "operator_init": "ring"}}
    validate_config(cfg)


def test_operators_get_their_own_adam_group_only_when_asked():
    model = HKD(small_teacher(), EPS, T)
    one = parameter_groups(model, {"operator_lr": None})
    assert len(one) == 1
    two = parameter_groups(model, {"operator_lr": 0.01})
    ops = {id(p) for p in model.koopman.parameters()}
    assert two[1]["lr"] == 0.01 and {id(p) for p in two[1]["params"]} == ops
    assert not ops & {id(p) for p in two[0]["params"]}
    opt = torch.optim.Adam(two, lr=3e-4)
    assert [g["lr"] for g in opt.param_groups] == [3e-4, 0.01] and opt.defaults["weight_decay"] == 0
    frozen = HKD(small_teacher(), EPS, T, koopman=False)
    assert len(parameter_groups(frozen, {"operator_lr": 0.01})) == 1  # nothing to put in the second


def test_without_koopman_the_operator_levers_are_not_part_of_the_training():
    hk = {**PAPER_LEVERS, "koopman": False, "time_points": 4}
    assert not {"operator_param", "operator_init", "operator_lr"} & set(effective_hkd(hk))
    assert "network_sigma" in effective_hkd(hk)


def test_fixed_network_sigma_leaves_t_to_the_scalings_and_starts_at_the_teacher():
    teacher = small_teacher()
    fixed = HKD(teacher, EPS, T, decoder="boundary", network_sigma="sigma_max").eval()
    paper = HKD(teacher, EPS, T, decoder="boundary").eval()
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(fixed.sample(noise), paper.sample(noise))  # at t = T the same network
        x, t = noise * 2.0, torch.full((2,), 2.0)
        c_in = lambda s: edm_coefficients(torch.tensor(s), 0.5)[2]  # noqa: E731
        # the encoder sees c_in(t) x_t but embeds T: as the paper's encoder at T sees an input scaled to match
        same = paper.encode(x * c_in(2.0) / c_in(T), torch.full((2,), T))
        for a, b in zip(fixed.encode(x, t), same):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        assert (fixed(x, t) - paper(x, t)).abs().max() > 1e-3  # off T the two networks differ


def test_prediction_times_lie_strictly_between_eps_and_t_on_the_grid():
    sigmas = edm_sigmas(18, EPS, T, 7.0).double()
    grid = sigmas[:-1]
    t = sample_times(500, 4, sigmas, torch.Generator().manual_seed(0), "uniform_sigma")
    s = prediction_times(t, sigmas, torch.Generator().manual_seed(1))
    inner = s != t
    assert torch.isin(s[inner], grid[1:-1]).all() and (s[inner] < t[inner]).all() and (s > EPS).all()
    assert (t[~inner] <= grid[-2]).all()  # s = t only where no grid time lies between eps and t
    low = grid[-3] > t[:, 1:]  # below the second-to-last grid time: only one choice
    assert (s[:, 1:][low & (t[:, 1:] > grid[-2])] == grid[-2]).all()
    assert inner.float().mean() > 0.9


def _trajectory_batch(b=3):
    sigmas = edm_sigmas(18, EPS, T, 7.0).double()
    gen = torch.Generator().manual_seed(6)
    states = torch.randn(b, len(sigmas), 1, 16, 16, generator=gen) * sigmas[:, None, None, None].float()
    t = sample_times(b, 2, sigmas, gen, "grid_index")
    return states, sigmas, t


def test_intermediate_targets_reduce_to_todays_loss_at_eps_and_vanish_at_t():
    model = HKD(small_teacher(), EPS, T, time_unit=80.0, decoder="boundary").eval()
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.3), b.normal_(0, 0.3)
    states, sigmas, t = _trajectory_batch()
    cpu = torch.device("cpu")
    with torch.no_grad():
        today, _ = hkd_distances(model, states, sigmas, t, cpu, None)
        at_eps, _ = hkd_distances(
            model, states, sigmas, t, cpu, None, s=torch.full_like(t, float(sigmas[-2]))
        )
        at_t, _ = hkd_distances(model, states, sigmas, t, cpu, None, s=t.clone())
    k = t.shape[1]
    torch.testing.assert_close(at_eps[:, :k], today)
    # s = eps is today's prediction, compared with the stored state at eps (the end is the
    # solver's last step from eps to 0)
    ends_at_eps = states.clone()
    ends_at_eps[:, -1] = states[:, -2]
    with torch.no_grad():
        against_eps, _ = hkd_distances(model, ends_at_eps, sigmas, t, cpu, None)
    torch.testing.assert_close(at_eps[:, k:], against_eps, rtol=1e-5, atol=1e-7)
    assert (at_t[:, k:] == 0).all()  # from t to t the boundary map is the identity


def test_predictions_at_several_times_encode_once_and_match_one_at_a_time():
    model = HKD(small_teacher(), EPS, T, time_unit=80.0, decoder="boundary").eval()
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.3), b.normal_(0, 0.3)
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([40.0, 3.0])
    s = torch.tensor([[EPS, 10.0], [EPS, 1.0]])
    with torch.no_grad():
        both = model(x, t, None, s)
        torch.testing.assert_close(both[:, 0], model(x, t), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(both[:, 1], model.state_at(x, t, s[:, 1]), rtol=1e-5, atol=1e-6)


def test_zeroed_operators_give_the_no_koopman_map():
    teacher = small_teacher()
    model = HKD(teacher, EPS, T, time_unit=80.0, decoder="boundary").eval()
    with torch.no_grad():
        for a, b in zip(model.koopman.alpha, model.koopman.beta):
            a.normal_(0, 0.5), b.normal_(0, 0.5)
    no_koopman = HKD(teacher, EPS, T, time_unit=80.0, decoder="boundary", koopman=False).eval()
    no_koopman.load_state_dict(model.state_dict())
    noise = torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        trained = model.sample(noise)
        with operators_off(model):
            zeroed = model.sample(noise)
        torch.testing.assert_close(zeroed, no_koopman.sample(noise))
        assert (trained - zeroed).abs().max() > 1e-3  # the operators did move this model
    assert model.evolved_levels == list(range(model.koopman.num_levels))  # restored afterwards
    untrained = HKD(teacher, EPS, T, decoder="boundary").eval()  # A = 0: zeroing changes nothing
    with torch.no_grad(), operators_off(untrained) as off:
        torch.testing.assert_close(
            off.sample(noise), HKD(teacher, EPS, T, decoder="boundary").eval().sample(noise)
        )


def test_the_log_gain_diagnostic_has_the_flows_sign():
    model = HKD(small_teacher(), EPS, T, time_unit=80.0)
    with torch.no_grad():
        model.koopman.alpha[0].fill_(0.5)  # a positive alpha decays the flow from T to eps
    stats = koopman_exponents(model)["alpha_dt_level0"]
    assert stats["mean"] == pytest.approx(-0.5 * SPAN, rel=1e-5) and stats["q95"] < 0
    z = torch.ones(1, model.koopman.alpha[0].shape[0] * 2, *model.koopman.alpha[0].shape[1:])
    gain = model.koopman.evolve([z], torch.tensor([-SPAN]), [0])[0].mean().item()
    assert math.log(gain) == pytest.approx(stats["mean"], rel=1e-4)


def test_a_training_with_every_new_lever_moves_the_operators_and_resumes(tmp_path, smoke_cfg, monkeypatch):
    """Log-parametrised ring-initialised operators in their own Adam group, a fixed network
    noise level and intermediate targets: the run trains, the operators move at their own lr,
    the prediction terms are logged, and a killed run resumes to the same weights."""
    from test_hkd_resume_ddp import assert_same, make_run, train, weights

    from hkd.io import load_torch
    from hkd.koopman.model import load_hkd
    from hkd.train import hkd_train

    cfg, teacher, work = make_run(tmp_path, smoke_cfg)
    cfg["hkd"].update(
        decoder="boundary",
        operator_param="log",
        operator_init="ring",
        operator_lr=0.05,
        network_sigma="sigma_max",
        prediction_weight=0.5,
        ema_halflife_kimg=0,
    )
    validate_config(cfg)
    stats = train(cfg, teacher, work, "full")
    model = load_hkd(str(work / "full.pt"))
    assert model.network_sigma == "sigma_max" and model.koopman.param == "log"
    start = build_hkd(teacher, cfg)  # the same ring (drawn from the run's seed)
    moved = (model.koopman.log_alpha[0] - start.koopman.log_alpha[0]).abs().max()
    assert 0.05 < moved < 9 * 0.05 * 1.01  # Adam moves each entry by at most ~lr per step (9 steps)
    assert stats["steps"] == 9 and math.isfinite(stats["koopman_T"]["alpha_dt_level0"]["std"])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(work / "tb-full")).Reload().Tags()["scalars"]
    assert "hkd/loss_prediction" in tags and "hkd/loss_trajectory" in tags
    real, calls = hkd_train.hkd_distances, []

    def dies_at_step_6(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(hkd_train, "hkd_distances", dies_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, teacher, work, "cut")
    assert load_torch(work / "cut-resume.pt")["step"] == 4
    monkeypatch.setattr(hkd_train, "hkd_distances", real)
    train(cfg, teacher, work, "cut")
    assert_same(weights(work / "cut.pt"), weights(work / "full.pt"))
