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
    return SD**2 / (sigma**2 + SD**2) * x


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
    exact = noise * 80.0 * SD / (80.0**2 + SD**2) ** 0.5
    errors = []
    for steps in (18, 36, 72):
        final = heun_sample(
            lambda x, s: gaussian_denoiser(x.double(), s.double()), noise, edm_sigmas(steps, 0.002, 80.0, 7.0)
        )
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


def reference_sigmas(num_steps, sigma_min, sigma_max, rho):
    """EDM eq. 5 in plain Python floats, with the final 0."""
    out = [
        (sigma_max ** (1 / rho) + i / (num_steps - 1) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho)))
        ** rho
        for i in range(num_steps)
    ]
    return out + [0.0]


def test_heun_on_a_network_matches_reference_within_1e5():
    """EDM's Algorithm 1 written plainly (float64, one sample at a time, its own sigma grid)
    against the batched sampler, both on the same small EDM network."""
    from hkd.nn.precond import EDMPrecond
    from hkd.teacher.trajectories import make_denoiser

    torch.manual_seed(0)
    net = EDMPrecond(16, 1, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    grid = reference_sigmas(18, 0.002, 80.0, 7.0)
    torch.testing.assert_close(
        edm_sigmas(18, 0.002, 80.0, 7.0), torch.tensor(grid, dtype=torch.float64), rtol=1e-12, atol=0
    )
    noise = seeded_noise([3, 4], (1, 16, 16))
    final = heun_sample(
        make_denoiser(net, torch.device("cpu"), None), noise, edm_sigmas(18, 0.002, 80.0, 7.0)
    )

    def one(x, t):
        with torch.no_grad():
            return net(x[None].float(), torch.tensor([t]))[0].double()

    for b in range(2):
        ref = reference_heun(one, noise[b].double() * grid[0], torch.tensor(grid))
        assert (final[b] - ref).abs().max() <= 1e-5


def _small_net(label_dim: int):
    from hkd.nn.precond import EDMPrecond

    torch.manual_seed(3)
    net = EDMPrecond(
        8, 1, label_dim=label_dim, model_channels=8, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4]
    )
    with torch.no_grad():  # EDM zero-initialises output layers; make every weight count
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


def generate_py_heun(net, latents, sigmas, class_labels=None):
    """The deterministic sampler of EDM's generate.py (S_churn = 0) as that script runs it:
    float64 state, the network called with the whole batch and one float64 0-dim sigma."""
    x_next = latents.to(torch.float64) * sigmas[0]
    for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        x_hat, t_hat = x_next, t_cur
        d_cur = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < len(sigmas) - 2:
            d_prime = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


def test_teacher_is_called_as_edm_generate_calls_it():
    """One sigma per call for the whole batch, embedded at batch 1; a conditional network
    without labels gets zeros [1, label_dim]; the samples equal generate.py's loop bit for bit."""
    sigmas = edm_sigmas(6, 0.002, 80.0, 7.0)
    noise = seeded_noise(range(5), (1, 8, 8))
    for label_dim in (0, 10):
        net = _small_net(label_dim)
        seen = []
        hook = net.model.map_noise.register_forward_hook(
            lambda m, args, out, seen=seen: seen.append(tuple(args[0].shape))
        )
        calls = []

        def denoise(x, sigma, net=net, calls=calls):
            calls.append(tuple(sigma.shape))
            with torch.no_grad():
                return net(x, sigma)

        with torch.no_grad():
            ours = heun_sample(denoise, noise, sigmas)
            assert calls == [()] * nfe(6) and seen == [(1,)] * nfe(6)
            theirs = generate_py_heun(net, noise, sigmas)
        hook.remove()
        assert torch.equal(ours, theirs), (ours - theirs).abs().max()
        with torch.no_grad():  # the batch call equals the network given sigma as a batch-1 tensor
            x, s = noise * 3.0, sigmas[2].float()
            assert torch.equal(net(x, s), net(x, s.reshape(1)))
    labels_seen = []
    hook = net.model.map_label.register_forward_hook(
        lambda m, args, out: labels_seen.append(tuple(args[0].shape))
    )
    with torch.no_grad():
        net(noise, sigmas[1].float())
    hook.remove()
    assert labels_seen == [(1, 10)]  # EDM's zeros([1, label_dim]) for a conditional net without labels
