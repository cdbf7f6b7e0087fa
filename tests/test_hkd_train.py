import torch

from hkd.teacher.sampler import edm_sigmas
from hkd.train.hkd_train import lambda1, sample_times, states_at


def test_states_at_grid_points_and_between():
    sigmas = edm_sigmas(6, 0.002, 80.0, 7.0)
    states = torch.randn(3, len(sigmas), 1, 2, 2).half()
    grid_t = sigmas[:-1].expand(3, -1)
    exact = states_at(states, sigmas, grid_t)
    torch.testing.assert_close(exact, states[:, :-1].float())
    mid_t = (sigmas[1:3] + sigmas[2:4]) / 2  # halfway between grid points 1-2 and 2-3
    mid = states_at(states, sigmas, mid_t.expand(3, -1))
    torch.testing.assert_close(mid[:, 0], (states[:, 1].float() + states[:, 2].float()) / 2)
    torch.testing.assert_close(mid[:, 1], (states[:, 2].float() + states[:, 3].float()) / 2)


def test_sample_times_range_and_first_column():
    sigmas = edm_sigmas(18, 0.002, 80.0, 7.0)
    t = sample_times(500, 4, sigmas, torch.Generator().manual_seed(0))
    assert t.shape == (500, 5)
    assert torch.all(t[:, 0] == 80.0)
    assert torch.all((t[:, 1:] >= 0.002) & (t[:, 1:] < 80.0))
    assert 30 < float(t[:, 1:].mean()) < 50  # uniform on [eps, T): mean ~ 40


def test_lambda1_schedule():
    assert lambda1(0, 10) == 1.0
    assert abs(lambda1(10, 10) - 1e-3) < 1e-12
