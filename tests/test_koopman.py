import math

import torch

from hkd.koopman.operators import KoopmanOperators, evolve_pairs


def block_generator(alpha, beta):
    """Dense generator matrix for one position: block-diag [[a, b], [-b, a]]."""
    n = alpha.numel()
    A = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
    for k in range(n):
        A[2 * k, 2 * k] = A[2 * k + 1, 2 * k + 1] = alpha[k]
        A[2 * k, 2 * k + 1] = beta[k]
        A[2 * k + 1, 2 * k] = -beta[k]
    return A


def test_closed_form_matches_matrix_exponential():
    torch.manual_seed(0)
    c, h, w = 6, 3, 2
    alpha, beta = torch.randn(c // 2, h, w) * 0.5, torch.randn(c // 2, h, w) * 2
    z = torch.randn(4, c, h, w)
    dt = torch.tensor([0.0, -0.3, 0.7, -1.0])
    out = evolve_pairs(z, alpha, beta, dt)
    for b in range(4):
        for i in range(h):
            for j in range(w):
                E = torch.linalg.matrix_exp(dt[b].double() * block_generator(alpha[:, i, j], beta[:, i, j]))
                ref = E @ z[b, :, i, j].double()
                torch.testing.assert_close(out[b, :, i, j].double(), ref, rtol=1e-5, atol=1e-5)


def test_zero_generator_is_identity_and_flow_composes():
    ops = KoopmanOperators([4, 8], [4, 2])
    feats = [torch.randn(2, 4, 4, 4), torch.randn(2, 8, 2, 2)]
    same = ops.evolve(feats, torch.tensor([0.5, -2.0]))
    for a, b in zip(same, feats):
        torch.testing.assert_close(a, b)
    with torch.no_grad():
        for p in list(ops.alpha) + list(ops.beta):
            p.normal_()
    two = ops.evolve(ops.evolve(feats, torch.tensor([0.2, 0.1])), torch.tensor([-0.5, 0.3]))
    one = ops.evolve(feats, torch.tensor([-0.3, 0.4]))
    for a, b in zip(two, one):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_level_selection_passes_others_through():
    ops = KoopmanOperators([2, 2], [1, 1])
    with torch.no_grad():
        ops.beta[0].fill_(math.pi / 2)
        ops.beta[1].fill_(math.pi / 2)
    feats = [torch.tensor([[[[1.0]], [[0.0]]]]), torch.tensor([[[[1.0]], [[0.0]]]])]
    out = ops.evolve(feats, torch.tensor([1.0]), levels=[0])
    torch.testing.assert_close(out[0].flatten(), torch.tensor([0.0, -1.0]), atol=1e-6, rtol=0)
    assert out[1] is feats[1]
