"""Preference losses beside DPO (IPO, SimPO, KTO in llm.losses) against values worked by hand.
cDPO is ``dpo_loss(label_smoothing=eps)``: its value is tested in tests/test_rl_math.py, its
gradient here."""

from __future__ import annotations

import torch

from llm.losses import dpo_loss, ipo_loss, kto_loss, kto_reference_point, simpo_loss


def close(actual, expected, atol=1e-6):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), (actual.tolist(), expected.tolist())


def test_ipo_by_hand():
    ref_c, ref_r = torch.tensor([-10.0]), torch.tensor([-12.0])
    pi_c, pi_r = ref_c + 2.0, ref_r - 3.0  # margin h = 2 - (-3) = 5
    # beta = 0.1: target 1 / 0.2 = 5 -> (5 - 5)^2 = 0; beta = 0.5: target 1 -> (5 - 1)^2 = 16
    close(ipo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)[0], [0.0])
    loss, rc, rr = ipo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.5)
    close(loss, [16.0])
    close(rc, [1.0])  # 0.5 * 2
    close(rr, [-1.5])  # 0.5 * -3


def test_ipo_at_reference_pulls_toward_the_target_margin():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-12.0], requires_grad=True)
    loss, _, _ = ipo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta=0.1)
    close(loss, [25.0])  # (0 - 5)^2
    loss.sum().backward()
    # d/dpi_c (h - 5)^2 = 2 (h - 5) = -10; d/dpi_r = +10
    close(pc.grad, [-10.0])
    close(pr.grad, [10.0])


def test_simpo_by_hand():
    # chosen -4 over 2 tokens (avg -2), rejected -9 over 3 (avg -3); beta 2: rewards -4, -6
    # logits = -4 - (-6) - gamma 1 = 1; -log sigmoid(1) = ln(1 + e^-1) = 0.313262
    pc, pr = torch.tensor([-4.0]), torch.tensor([-9.0])
    lc, lr = torch.tensor([2]), torch.tensor([3])
    loss, rc, rr = simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=1.0)
    close(loss, [0.313262])
    close(rc, [-4.0])
    close(rr, [-6.0])
    # eps 0.1: 0.9 * 0.313262 + 0.1 * ln(1 + e) = 0.281936 + 0.131326 = 0.413262
    close(simpo_loss(pc, pr, lc, lr, beta=2.0, gamma=1.0, label_smoothing=0.1)[0], [0.413262])
    # a zero length counts as 1 (no division by zero): rewards 2 * -4 = -8 and -6, logits -3
    close(simpo_loss(pc, pr, torch.tensor([0]), lr, beta=2.0, gamma=1.0)[1], [-8.0])


def test_kto_reference_point():
    close(kto_reference_point(torch.tensor([0.5, 1.5]), torch.tensor([0.0, 0.0])), 1.0)
    close(kto_reference_point(torch.tensor([-1.0, 0.0]), torch.tensor([0.0, 0.0])), 0.0)  # clamped at 0
    p = torch.tensor([2.0, 3.0], requires_grad=True)
    assert not kto_reference_point(p, torch.zeros(2)).requires_grad


def test_kto_by_hand():
    pol = torch.tensor([1.0, -2.0], requires_grad=True)
    ref = torch.zeros(2)
    up = torch.tensor([True, False])
    # r = [1, -2], z0 = 0.5, beta 0.4
    #   desirable:   1 - sigmoid(0.4 * (1 - 0.5)) = 1 - sigmoid(0.2) = 1 - 0.549834 = 0.450166
    #   undesirable: 1 - sigmoid(0.4 * (0.5 + 2)) = 1 - sigmoid(1.0) = 1 - 0.731059 = 0.268941, x 2
    z0 = torch.tensor(0.5, requires_grad=True)
    loss, rew = kto_loss(pol, ref, up, z0, beta=0.4, undesirable_weight=2.0)
    close(loss, [0.450166, 0.537883])
    close(rew, [0.4, -0.8])
    loss.sum().backward()
    assert z0.grad is None  # the reference point takes no gradient
    # d/dr of 1 - sigmoid(b (r - z0)) = -b s (1 - s) with s = 0.549834: -0.4 * 0.247517 = -0.099007
    close(pol.grad[0], -0.099007)
    # a negative reference point counts as 0: 1 - sigmoid(0.4) = 1 - 0.598688 = 0.401312
    close(kto_loss(pol, ref, up, -0.3, beta=0.4)[0][0], 0.401312)


def test_kto_at_reference_is_half_the_weight():
    lp = torch.tensor([-5.0, -7.0, -3.0])
    loss, _ = kto_loss(lp, lp.clone(), torch.tensor([True, False, True]), 0.0, desirable_weight=1.0, undesirable_weight=1.5)
    close(loss, [0.5, 0.75, 0.5])


def test_cdpo_gradient_at_reference_shrinks_by_one_minus_two_eps():
    pc = torch.tensor([-10.0], requires_grad=True)
    pr = torch.tensor([-12.0])
    loss, _, _ = dpo_loss(pc, pr, pc.detach().clone(), pr.clone(), beta=0.1, label_smoothing=0.2)
    close(loss, [0.693147])  # 0.8 ln 2 + 0.2 ln 2
    loss.sum().backward()
    # -beta (1 - eps) sigmoid(0) + beta eps sigmoid(0) = -0.1 * 0.5 * (1 - 0.4) = -0.03
    close(pc.grad, [-0.03])


def test_simpo_gradient_is_length_normalised():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-9.0], requires_grad=True)
    loss, _, _ = simpo_loss(pc, pr, torch.tensor([2]), torch.tensor([3]), beta=2.0, gamma=1.0)  # logits 1 as above
    loss.sum().backward()
    # d/dpi_c -log sigmoid(z) = -sigmoid(-z) * beta / |c| = -0.268941 * 2 / 2; d/dpi_r = +0.268941 * 2 / 3
    close(pc.grad, [-0.268941])
    close(pr.grad, [0.179294])


def test_kto_undesirable_gradient_pushes_its_reward_down():
    pol = torch.tensor([1.0, -2.0], requires_grad=True)
    loss, _ = kto_loss(pol, torch.zeros(2), torch.tensor([True, False]), 0.5, beta=0.4, undesirable_weight=2.0)
    loss.sum().backward()
    # d/dr 2 (1 - sigmoid(0.4 (0.5 - r))) = 2 * 0.4 * s (1 - s) with s = sigmoid(1) = 0.731059: 0.8 * 0.196612 = 0.157290
    close(pol.grad[1], 0.157290)


def test_kto_reference_point_from_mismatched_pairs():
    # three examples; mismatched pairs (x_i, y_{i+1}) with policy - reference log-probs 0.3, -0.6, 0.9:
    # mean 0.2 (z0 is one number for the batch, not per example)
    pol = torch.tensor([-5.7, -8.6, -3.1])
    ref = torch.tensor([-6.0, -8.0, -4.0])
    close(kto_reference_point(pol, ref), 0.2)
