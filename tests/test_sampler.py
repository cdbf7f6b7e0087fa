import torch

from hkd.teacher.sampler import edm_sigmas, heun_sample, nfe, seeded_noise


def test_sigma_grid():
    s = edm_sigmas(18, 0.002, 80.0, 7.0)
    assert len(s) == 19 and s[-1] == 0
    assert abs(s[0] - 80) < 1e-9 and abs(s[-2] - 0.002) < 1e-12
    assert torch.all(s[:-1] > s[1:])
    assert nfe(18) == 35


SD = 0.5


def gaussian_denoiser(x, sigma):
    """Ideal denoiser for data ~ N(0, SD^2): the PF-ODE solution is then
    x(sigma) = x_T sqrt(sigma^2 + SD^2) / sqrt(T^2 + SD^2)."""
    return SD ** 2 / (sigma ** 2 + SD ** 2) * x


def reference_heun(denoise, x_T, sigmas):
    """EDM Algorithm 1 (deterministic), written out plainly, one sample at a time."""
    x = x_T.clone()
    for i in range(len(sigmas) - 1):
        t, t_next = float(sigmas[i]), float(sigmas[i + 1])
        d = (x - denoise(x, t)) / t
        x_new = x + (t_next - t) * d
        if t_next != 0:
            d2 = (x_new - denoise(x_new, t_next)) / t_next
            x_new = x + (t_next - t) * (d + d2) / 2
        x = x_new
    return x


def test_heun_matches_reference_and_counts_nfe():
    calls = []

    def denoise(x, sigma):
        calls.append(1)
        return gaussian_denoiser(x.double(), sigma.double())

    sigmas = edm_sigmas(18, 0.002, 80.0, 7.0)
    noise = seeded_noise([1, 2, 3], (1, 4, 4)).double()
    final, states = heun_sample(denoise, noise, sigmas, keep_states=True)
    assert len(calls) == 35 and len(states) == 19
    for b in range(3):
        ref = reference_heun(lambda x, t: gaussian_denoiser(x, t), noise[b] * 80.0, sigmas)
        torch.testing.assert_close(final[b], ref, rtol=1e-6, atol=1e-6)


def test_heun_converges_to_exact_flow():
    noise = seeded_noise([7], (1, 2, 2)).double()
    exact = noise * 80.0 * SD / (80.0 ** 2 + SD ** 2) ** 0.5
    errors = []
    for steps in (18, 36, 72):
        final = heun_sample(lambda x, s: gaussian_denoiser(x.double(), s.double()), noise,
                            edm_sigmas(steps, 0.002, 80.0, 7.0))
        errors.append(float((final - exact).abs().max() / exact.abs().max()))
    assert errors[0] > errors[1] * 3 > errors[2] * 9  # second order
    assert errors[2] < 5e-3


def test_seeded_noise_is_per_seed():
    a = seeded_noise([5, 6], (1, 2, 2))
    b = seeded_noise([6], (1, 2, 2))
    torch.testing.assert_close(a[1], b[0])
    assert not torch.equal(a[0], a[1])


def test_compiled_teacher_denoiser_matches_eager():
    """`compile: true` samples the teacher through torch.compile: one graph for every noise
    level of the Heun grid (sigma is a tensor input), same samples as eager."""
    from hkd.nn.precond import EDMPrecond
    from hkd.teacher.trajectories import make_denoiser

    torch.manual_seed(0)
    net = EDMPrecond(16, 1, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]).eval()
    noise = seeded_noise([0, 1, 2], (1, 16, 16))
    sigmas = edm_sigmas(4, 0.002, 80.0, 7.0)
    cpu = torch.device("cpu")
    eager = heun_sample(make_denoiser(net, cpu, None), noise, sigmas)
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        compiled = heun_sample(make_denoiser(net, cpu, None, compile=True), noise, sigmas)
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
