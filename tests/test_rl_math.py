"""Pure RLHF math (llm.rl.advantages, llm.rl.kl, llm.rl.rewards and the RLHF losses in
llm.losses) against values worked by hand, closed forms and independent references."""

from __future__ import annotations

import random

import pytest
import torch

from llm.losses import (
    IGNORE_INDEX,
    dpo_loss,
    entropy_from_logits,
    pairwise_accuracy,
    pairwise_reward_loss,
    ppo_policy_loss,
    ppo_value_loss,
    sequence_logprobs,
    token_logprobs,
)
from llm.rl.advantages import gae, masked_mean, masked_var, masked_whiten
from llm.rl.experience import Rollout, kl_penalised_rewards
from llm.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate
from llm.rl.rewards import contains_word, load_reward_fn, short

LN2 = 0.6931471805599453
LN3 = 1.0986122886681098


def close(actual, expected, atol=1e-6):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), (actual.tolist(), expected.tolist())


# ============================================================== masked statistics
def test_masked_mean_all_and_along_dim():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # all: (1 + 2 + 4) / 3 = 7/3
    close(masked_mean(x, mask), 7.0 / 3.0)
    # per row: (1 + 2) / 2 = 1.5; 4 / 1 = 4
    close(masked_mean(x, mask, dim=1), [1.5, 4.0])
    # per column: (1 + 4) / 2 = 2.5; 2 / 1 = 2; nothing / clamp(0, min=1) = 0
    close(masked_mean(x, mask, dim=0), [2.5, 2.0, 0.0])


def test_masked_mean_of_empty_mask_is_zero():
    close(masked_mean(torch.tensor([5.0, 7.0]), torch.tensor([0, 0])), 0.0)


def test_masked_var_by_hand():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    mask = torch.tensor([1, 1, 1, 0])
    # mean = (1 + 2 + 3) / 3 = 2; squared deviations 1, 0, 1 (the 4 is padding)
    # biased = 2 / 3; unbiased = 2 / (3 - 1) = 1
    close(masked_var(x, mask), 1.0)
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)


def test_masked_var_2d_and_single_element():
    x = torch.tensor([[2.0, 4.0, 99.0], [6.0, -50.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]])
    # values 2, 4, 6, 8: mean 5; deviations^2 9, 1, 1, 9 = 20; unbiased 20 / 3
    close(masked_var(x, mask), 20.0 / 3.0)
    close(masked_var(x, mask, unbiased=False), 5.0)
    # one element: the unbiased variance is undefined and comes back as 0
    close(masked_var(torch.tensor([3.0, 1.0]), torch.tensor([1, 0])), 0.0)


def test_masked_whiten_by_hand():
    x = torch.tensor([[2.0, 4.0, 6.0, 100.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # mean = 4; unbiased var = (4 + 0 + 4) / 2 = 4; std = 2
    # (2-4)/2 = -1, (4-4)/2 = 0, (6-4)/2 = 1, padding -> 0
    close(masked_whiten(x, mask), [[-1.0, 0.0, 1.0, 0.0]])
    # shift_mean=False adds the mean back: -1 + 4 = 3, 0 + 4 = 4, 1 + 4 = 5, padding -> 0
    close(masked_whiten(x, mask, shift_mean=False), [[3.0, 4.0, 5.0, 0.0]])


def test_masked_whiten_random_has_mean_zero_std_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 9, generator=g, dtype=torch.float64) * 3.0 + 7.0
    lengths = [9, 5, 2, 7]
    mask = torch.tensor([[1.0 if t < n else 0.0 for t in range(9)] for n in lengths], dtype=torch.float64)
    x = x + 1000.0 * (1 - mask)  # garbage in the padding must not leak in
    w = masked_whiten(x, mask)
    vals = w[mask.bool()]
    assert vals.numel() == sum(lengths)
    close(vals.mean(), 0.0, atol=1e-9)
    close(vals.std(unbiased=True), 1.0, atol=1e-6)
    assert torch.all(w[~mask.bool()] == 0)

    kept = masked_whiten(x, mask, shift_mean=False)
    kvals = kept[mask.bool()]
    close(kvals.mean(), x[mask.bool()].mean(), atol=1e-9)  # the mean is kept
    close(kvals.std(unbiased=True), 1.0, atol=1e-6)
    assert torch.all(kept[~mask.bool()] == 0)


# ==================================================================== GAE
def test_gae_gamma1_lam1_is_reward_to_go():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0, 3.0, 99.0]])
    values = torch.tensor([[0.5, 1.0, 1.5, 2.0], [0.5, 1.0, 1.5, 77.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # row 0 reward-to-go: 1+2+3+4 = 10, 2+3+4 = 9, 3+4 = 7, 4
    # row 1 (last token is padding): 1+2+3 = 6, 2+3 = 5, 3, 0
    close(ret, [[10.0, 9.0, 7.0, 4.0], [6.0, 5.0, 3.0, 0.0]])
    # advantages = returns - values: 10-0.5, 9-1, 7-1.5, 4-2 ; 6-0.5, 5-1, 3-1.5, 0
    close(adv, [[9.5, 8.0, 5.5, 2.0], [5.5, 4.0, 1.5, 0.0]])


def test_gae_by_hand_1x3():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.3, 0.4, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # gamma * lam = 0.72
    # delta_2 = r_2 + 0 - V_2 = 1.0 - 0.5 = 0.5;             A_2 = 0.5
    # delta_1 = 0 + 0.9*0.5 - 0.4 = 0.05;                   A_1 = 0.05 + 0.72*0.5  = 0.41
    # delta_0 = 0 + 0.9*0.4 - 0.3 = 0.06;                   A_0 = 0.06 + 0.72*0.41 = 0.3552
    close(adv, [[0.3552, 0.41, 0.5]])
    # returns = A + V: 0.3552 + 0.3 = 0.6552, 0.41 + 0.4 = 0.81, 0.5 + 0.5 = 1.0
    close(ret, [[0.6552, 0.81, 1.0]])


def test_gae_episode_ends_at_last_masked_token():
    rewards = torch.tensor([[0.0, 1.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    # V_2 is garbage past the mask; the value after the last real token must count as 0
    # delta_1 = 1.0 + 0.9*0 - 0.4 = 0.6;                A_1 = 0.6
    # delta_0 = 0 + 0.9*0.4 - 0.2 = 0.16;              A_0 = 0.16 + 0.72*0.6 = 0.592
    # returns: 0.592 + 0.2 = 0.792, 0.6 + 0.4 = 1.0, 0
    for garbage in (50.0, -3.0, 0.0):
        values = torch.tensor([[0.2, 0.4, garbage]])
        adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
        close(adv, [[0.592, 0.6, 0.0]])
        close(ret, [[0.792, 1.0, 0.0]])


def _gae_reference(rewards: list[float], values: list[float], length: int, gamma: float, lam: float):
    """A plain per-row loop over lists, written independently of the code under test."""
    T = len(rewards)
    adv = [0.0] * T
    running = 0.0
    for t in range(length - 1, -1, -1):
        v_next = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * v_next - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    ret = [adv[t] + values[t] if t < length else 0.0 for t in range(T)]
    return adv, ret


def test_gae_matches_python_loop_random_ragged():
    rng = random.Random(1234)
    T, lengths, gamma, lam = 7, [7, 4, 1], 0.97, 0.9
    rewards = [[rng.uniform(-1, 1) for _ in range(T)] for _ in lengths]
    values = [[rng.uniform(-2, 2) for _ in range(T)] for _ in lengths]  # nonzero in the padding too
    mask = [[1.0 if t < n else 0.0 for t in range(T)] for n in lengths]
    adv, ret = gae(
        torch.tensor(rewards, dtype=torch.float64),
        torch.tensor(values, dtype=torch.float64),
        torch.tensor(mask, dtype=torch.float64),
        gamma=gamma,
        lam=lam,
    )
    for b, n in enumerate(lengths):
        ref_adv, ref_ret = _gae_reference(rewards[b], values[b], n, gamma, lam)
        close(adv[b], ref_adv, atol=1e-12)
        close(ret[b], ref_ret, atol=1e-12)
    # padded positions are exactly 0 in both outputs
    pad = torch.tensor(mask) == 0
    assert torch.all(adv[pad] == 0) and torch.all(ret[pad] == 0)
    # the length-1 row: A_0 = r_0 - V_0
    close(adv[2, 0], rewards[2][0] - values[2][0], atol=1e-12)


def test_kl_penalised_rewards_by_hand():
    kl = torch.tensor([[0.5, -0.25, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    rewards = kl_penalised_rewards(kl, torch.tensor([2.0, -1.0, 3.0]), mask, kl_coef=0.1)
    # -0.1 * kl everywhere; the score on each row's last response token (row 2 is empty: position 0)
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.025, 2.0], [-0.1 - 1.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))


def test_rollout_sequences_join_prompt_and_response():
    ro = Rollout(
        prompt_ids=torch.tensor([[0, 5, 6]]),
        prompt_mask=torch.tensor([[0, 1, 1]]),
        responses=torch.tensor([[7, 2, 0]]),
        response_mask=torch.tensor([[1, 1, 0]]),
        ended=torch.tensor([True]),
        texts=["x"],
        prompts=[[{"role": "user", "content": "q"}]],
    )
    assert ro.sequences.tolist() == [[0, 5, 6, 7, 2, 0]] and ro.attention_mask.tolist() == [[0, 1, 1, 1, 1, 0]] and ro.prompt_len == 3


# ===================================================================== KL
@pytest.mark.parametrize(
    "kind, at_ln2, at_minus_ln2",
    [
        ("k1", 0.693147, -0.693147),  # log_ratio itself
        ("k2", 0.240227, 0.240227),  # 0.5 * 0.693147^2 = 0.5 * 0.480453
        ("k3", 0.193147, 0.306853),  # e^{-x} - 1 + x: 0.5 - 1 + 0.693147 ; 2 - 1 - 0.693147
        ("abs", 0.693147, 0.693147),
    ],
)
def test_kl_estimate_by_hand(kind, at_ln2, at_minus_ln2):
    ref = torch.tensor([-1.0, 0.5])
    logp = ref + torch.tensor([LN2, -LN2])
    close(kl_estimate(logp, ref, kind), [at_ln2, at_minus_ln2])


def test_kl_estimate_default_is_k1_and_zero_at_equal():
    logp = torch.tensor([[-0.3, -2.0]])
    close(kl_estimate(logp + 0.25, logp), [[0.25, 0.25]])
    for kind in ("k1", "k2", "k3", "abs"):
        close(kl_estimate(logp, logp, kind), [[0.0, 0.0]])


def test_kl_k2_k3_nonnegative():
    g = torch.Generator().manual_seed(0)
    logp, ref = torch.randn(64, generator=g) * 3, torch.randn(64, generator=g) * 3
    assert torch.all(kl_estimate(logp, ref, "k3") >= 0)
    assert torch.all(kl_estimate(logp, ref, "k2") >= 0)
    assert torch.all(kl_estimate(logp, ref, "abs") >= 0)


def test_kl_estimate_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(2), torch.zeros(2), "k4")


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    for kl in (0.0, 12.0, 1e6):
        c.update(kl, 256)
    assert c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


def test_adaptive_kl_controller_by_hand():
    def fresh():
        return AdaptiveKLController(beta=0.1, target=6.0, horizon=10000)

    c = fresh()
    # error = 12/6 - 1 = 1 -> clipped to 0.2; beta = 0.1 * (1 + 0.2*256/10000) = 0.1 * 1.00512
    c.update(current_kl=12.0, n_steps=256)
    assert c.value == pytest.approx(0.100512, abs=1e-12)
    # then KL=3: error = 3/6 - 1 = -0.5 -> -0.2; beta = 0.100512 * (1 - 0.00512) = 0.09999737856
    c.update(current_kl=3.0, n_steps=256)
    assert c.value == pytest.approx(0.09999737856, abs=1e-12)

    c = fresh()
    c.update(current_kl=3.0, n_steps=256)  # 0.1 * (1 - 0.2*256/10000) = 0.1 * 0.99488
    assert c.value == pytest.approx(0.099488, abs=1e-12)

    c = fresh()
    c.update(current_kl=6.6, n_steps=256)  # error = 6.6/6 - 1 = 0.1 (inside the clip): 0.1 * 1.00256
    assert c.value == pytest.approx(0.100256, abs=1e-12)

    c = fresh()
    c.update(current_kl=6.0, n_steps=256)  # on target: error 0, beta unchanged
    assert c.value == pytest.approx(0.1, abs=1e-15)

    c = fresh()
    c.update(current_kl=0.0, n_steps=10000)  # error -1 -> -0.2; 0.1 * (1 - 0.2*1) = 0.08
    assert c.value == pytest.approx(0.08, abs=1e-12)


def test_adaptive_kl_controller_state_dict_round_trip():
    c = AdaptiveKLController(beta=0.1, target=6.0, horizon=10000)
    c.update(12.0, 256)
    state = c.state_dict()
    d = AdaptiveKLController(beta=0.7, target=6.0, horizon=10000)
    d.load_state_dict(state)
    assert d.value == c.value == pytest.approx(0.100512, abs=1e-12)
    c.update(3.0, 256)
    d.update(3.0, 256)
    assert d.value == c.value


@pytest.mark.parametrize("target, horizon", [(0.0, 100), (-1.0, 100), (6.0, 0)])
def test_adaptive_kl_controller_rejects_bad_args(target, horizon):
    with pytest.raises(ValueError):
        AdaptiveKLController(beta=0.1, target=target, horizon=horizon)


# ========================================================== token log-probs
def test_token_logprobs_by_hand_and_ignore_index():
    # softmax of [0, ln 3] = [1/4, 3/4]
    logits = torch.tensor([[[0.0, LN3], [0.0, LN3], [LN3, 0.0]]])
    tokens = torch.tensor([[1, 0, IGNORE_INDEX]])
    lp = token_logprobs(logits, tokens)
    # ln(3/4) = -0.287682, ln(1/4) = -1.386294, ignored -> 0
    close(lp, [[-0.287682, -1.386294, 0.0]])
    assert lp.shape == tokens.shape


def test_token_logprobs_matches_log_softmax_gather():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g) * 2
    tokens = torch.randint(0, 11, (2, 3), generator=g)
    tokens[0, 2] = IGNORE_INDEX
    tokens[1, 0] = IGNORE_INDEX
    lp = token_logprobs(logits, tokens)
    keep = tokens != IGNORE_INDEX
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
    close(lp, ref, atol=1e-5)
    assert lp[0, 2].item() == 0.0 and lp[1, 0].item() == 0.0


def test_token_logprobs_bf16_logits_upcast():
    logits = torch.tensor([[[0.0, LN3]]], dtype=torch.bfloat16)
    lp = token_logprobs(logits, torch.tensor([[1]]))
    assert lp.dtype == torch.float32
    close(lp, [[-0.287682]], atol=5e-3)  # bf16 rounds ln 3


def test_sequence_logprobs_sums_labelled_tokens_only():
    logits = torch.tensor(
        [
            [[0.0, LN3], [0.0, LN3], [LN3, 0.0]],
            [[5.0, -5.0], [1.0, 2.0], [0.0, 0.0]],
        ]
    )
    labels = torch.tensor([[1, 0, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX]])
    # row 0: ln(3/4) + ln(1/4) = -0.287682 - 1.386294 = -1.673976 (third token ignored)
    # row 1: nothing labelled -> 0
    close(sequence_logprobs(logits, labels), [-1.673976, 0.0])


# ================================================================= entropy
def test_entropy_from_logits():
    V = 5
    logits = torch.zeros(2, 3, V)
    logits[0, 1] = 3.0  # still uniform
    logits[1, 0] = torch.tensor([100.0, 0.0, 0.0, 0.0, 0.0])  # one-hot-ish
    logits[1, 2, :2] = torch.tensor([0.0, LN3])
    logits[1, 2, 2:] = -1e4  # effectively a 2-way distribution
    ent = entropy_from_logits(logits)
    assert ent.shape == (2, 3)
    # uniform over 5: ln 5 = 1.609438
    close(ent[0], [1.609438] * 3)
    close(ent[1, 1], 1.609438)
    # one very large logit: ~ 4 * e^-100 * 101 ~ 0
    close(ent[1, 0], 0.0)
    # [0, ln 3] -> probs 1/4, 3/4: -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.346574 + 0.215762 = 0.562335
    close(ent[1, 2], 0.562335)


def test_entropy_matches_definition_random():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 17, generator=g, dtype=torch.float64) * 2
    p = torch.softmax(logits, -1)
    close(entropy_from_logits(logits), -(p * torch.log(p)).sum(-1).float(), atol=1e-5)


# ========================================================== pairwise / DPO
def test_pairwise_reward_loss():
    r_c = torch.tensor([1.0, 2.0, 0.0, 3.0])
    r_r = torch.tensor([1.0, 1.0, 1.0, 2.0])
    # diffs 0, 1, -1, 1: ln 2 = 0.693147; ln(1 + e^-1) = 0.313262; ln(1 + e) = 1.313262
    close(pairwise_reward_loss(r_c, r_r), [0.693147, 0.313262, 1.313262, 0.313262])
    # scalar margin 1: diffs - 1 = -1, 0, -2, 0 -> ln(1+e), ln 2, ln(1+e^2) = 2.126928, ln 2
    close(pairwise_reward_loss(r_c, r_r, margin=1.0), [1.313262, 0.693147, 2.126928, 0.693147])
    # per-pair margins [0, 1, 0, 0.5]: diffs 0, 0, -1, 0.5 -> ln 2, ln 2, 1.313262, ln(1+e^-0.5) = 0.474077
    m = torch.tensor([0.0, 1.0, 0.0, 0.5])
    close(pairwise_reward_loss(r_c, r_r, margin=m), [0.693147, 0.693147, 1.313262, 0.474077])


def test_pairwise_accuracy_counts_a_tie_as_half():
    r_c = torch.tensor([1.0, 2.0, 0.0, 3.0, -1.0])
    r_r = torch.tensor([1.0, 1.0, 1.0, 3.0, -2.0])
    # tie, win, loss, tie, win
    close(pairwise_accuracy(r_c, r_r), [0.5, 1.0, 0.0, 0.5, 1.0])
    # DPO at step 0: the policy is the reference, every reward is 0, accuracy is chance, not 0
    _, rc, rr = dpo_loss(
        torch.tensor([-10.0, -3.5]), torch.tensor([-12.0, -7.0]), torch.tensor([-10.0, -3.5]), torch.tensor([-12.0, -7.0]), 0.1
    )
    assert pairwise_accuracy(rc, rr).mean().item() == 0.5


def test_dpo_loss_at_reference_is_ln2():
    pc = torch.tensor([-10.0, -3.5], requires_grad=True)
    pr = torch.tensor([-12.0, -7.0])
    loss, rc, rr = dpo_loss(pc, pr, pc.detach().clone(), pr.clone(), beta=0.1)
    close(loss, [LN2, LN2])
    close(rc, [0.0, 0.0])
    close(rr, [0.0, 0.0])
    # d/d pi_c of -log sigmoid(beta * (pi_c - ...)) = -beta * sigmoid(-0) = -0.1 * 0.5 = -0.05
    loss.sum().backward()
    close(pc.grad, [-0.05, -0.05])


def test_dpo_loss_by_hand_margin_and_label_smoothing():
    ref_c, ref_r = torch.tensor([-10.0]), torch.tensor([-12.0])
    pi_c, pi_r = ref_c + 2.0, ref_r - 3.0  # chosen up 2 nats, rejected down 3 nats
    loss, rc, rr = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1)
    # rewards: 0.1 * 2 = 0.2, 0.1 * (-3) = -0.3; logits = 0.2 - (-0.3) = 0.5
    close(rc, [0.2])
    close(rr, [-0.3])
    # -log sigmoid(0.5) = ln(1 + e^-0.5) = ln(1.606531) = 0.474077
    close(loss, [0.474077])
    # eps = 0.1: 0.9 * ln(1 + e^-0.5) + 0.1 * ln(1 + e^0.5)
    #          = 0.9 * 0.474077 + 0.1 * 0.974077 = 0.426669 + 0.097408 = 0.524077
    loss_ls, _, _ = dpo_loss(pi_c, pi_r, ref_c, ref_r, beta=0.1, label_smoothing=0.1)
    close(loss_ls, [0.524077])


def test_dpo_rewards_are_detached():
    pc = torch.tensor([-1.0], requires_grad=True)
    pr = torch.tensor([-2.0], requires_grad=True)
    loss, rc, rr = dpo_loss(pc, pr, torch.tensor([-1.5]), torch.tensor([-1.5]), beta=0.5)
    assert loss.requires_grad
    assert not rc.requires_grad and not rr.requires_grad
    # rc = 0.5 * (-1 + 1.5) = 0.25; rr = 0.5 * (-2 + 1.5) = -0.25
    close(rc, [0.25])
    close(rr, [-0.25])


# ===================================================================== PPO
def _ppo_case():
    # 2x3, clip 0.2; row 1's last token is padding (garbage values)
    #   token   ratio  A    -A*r   -A*clip(r)      max     clipped active?
    #   (0,0)   1.5   +1   -1.5   -1.2            -1.2    yes
    #   (0,1)   0.5   -1   +0.5   +0.8            +0.8    yes
    #   (0,2)   1.1   +2   -2.2   -2.2            -2.2    no (inside the range)
    #   (1,0)   0.5   +1   -0.5   -0.8            -0.5    no (unclipped is the pessimistic one)
    #   (1,1)   1.5   -1   +1.5   +1.2            +1.5    no
    #   (1,2)   3.0   +10  padding
    ratios = torch.tensor([[1.5, 0.5, 1.1], [0.5, 1.5, 3.0]], dtype=torch.float64)
    old_logp = torch.tensor([[-1.0, -2.0, -0.5], [-3.0, -0.1, -1.0]], dtype=torch.float64)
    logp = (old_logp + torch.log(ratios)).requires_grad_(True)
    adv = torch.tensor([[1.0, -1.0, 2.0], [1.0, -1.0, 10.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    return logp, old_logp, adv, mask


def test_ppo_policy_loss_by_hand():
    logp, old_logp, adv, mask = _ppo_case()
    loss, clipfrac, approx_kl = ppo_policy_loss(logp, old_logp, adv, mask, clip=0.2)
    # (-1.2 + 0.8 - 2.2 - 0.5 + 1.5) / 5 = -1.6 / 5 = -0.32
    close(loss, -0.32, atol=1e-9)
    # two of five tokens clipped
    close(clipfrac, 0.4, atol=1e-12)
    # 0.5 * (ln^2 1.5 + ln^2 0.5 + ln^2 1.1 + ln^2 0.5 + ln^2 1.5) / 5
    # = 0.5 * (0.164402 + 0.480453 + 0.009084 + 0.480453 + 0.164402) / 5 = 0.5 * 1.298794 / 5 = 0.129879
    close(approx_kl, 0.129879, atol=1e-6)
    assert not clipfrac.requires_grad and not approx_kl.requires_grad


def test_ppo_policy_loss_gradient_zero_where_clipped():
    logp, old_logp, adv, mask = _ppo_case()
    loss, _, _ = ppo_policy_loss(logp, old_logp, adv, mask, clip=0.2)
    loss.backward()
    # d/dlogp of -A * ratio / n_tokens (ratio = e^{logp - old}) = -A * ratio / 5 where unclipped is used;
    # 0 where the clipped term is active (ratio outside the range, so clamp has no gradient)
    #   (0,0) clipped -> 0; (0,1) clipped -> 0; (0,2) -2 * 1.1 / 5 = -0.44
    #   (1,0) -1 * 0.5 / 5 = -0.1; (1,1) +1 * 1.5 / 5 = 0.3; (1,2) padding -> 0
    close(logp.grad, [[0.0, 0.0, -0.44], [-0.1, 0.3, 0.0]], atol=1e-9)


def test_ppo_policy_loss_at_old_policy():
    # ratio 1 everywhere: loss = -mean(A) over the mask, nothing clipped, approx_kl 0
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    adv = torch.tensor([[1.0, 2.0, 100.0]])
    mask = torch.tensor([[1, 1, 0]])
    loss, clipfrac, approx_kl = ppo_policy_loss(logp, logp.clone(), adv, mask)
    close(loss, -1.5)  # -(1 + 2) / 2
    close(clipfrac, 0.0)
    close(approx_kl, 0.0)


def test_ppo_value_loss_by_hand():
    # clip 0.2; V_clipped = old + clip(V - old, -0.2, 0.2)
    #   V    old   R    V_clip  (V-R)^2  (Vc-R)^2  max   clipped active?
    #   1.0  0.5  1.0   0.7     0.0      0.09      0.09  yes
    #   0.6  0.5  1.0   0.6     0.16     0.16      0.16  no (equal)
    #   0.0  0.5  1.0   0.3     1.0      0.49      1.0   no
    #   2.0  1.0  0.0   1.2     4.0      1.44      4.0   no
    #   0.0  1.0  0.0   0.8     0.0      0.64      0.64  yes
    #   padding (9.0, 0.0, -9.0)
    values = torch.tensor([[1.0, 0.6, 0.0], [2.0, 0.0, 9.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[0.5, 0.5, 0.5], [1.0, 1.0, 0.0]], dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, -9.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    loss, clipfrac = ppo_value_loss(values, old, returns, mask, clip=0.2)
    # 0.5 * (0.09 + 0.16 + 1.0 + 4.0 + 0.64) / 5 = 0.5 * 5.89 / 5 = 0.589
    close(loss, 0.589, atol=1e-9)
    close(clipfrac, 0.4, atol=1e-12)
    assert not clipfrac.requires_grad
    loss.backward()
    # gradient 0.5 * 2 * (V - R) / 5 where the unclipped term wins, 0 where the clipped one does
    #   (0,0) clipped -> 0; (0,1) tie, both branches (V - R) -> (0.6-1)/5 = -0.08;
    #   (0,2) (0-1)/5 = -0.2; (1,0) (2-0)/5 = 0.4; (1,1) clipped -> 0; padding 0
    close(values.grad, [[0.0, -0.08, -0.2], [0.4, 0.0, 0.0]], atol=1e-9)


# ================================================================= rewards
def test_contains_word_whole_word_and_case():
    responses = ["I like Python.", "Pythonic code", "python rocks", "PYTHON", "no snake here", "(Python)", "CPython", ""]
    prompts = [""] * len(responses)
    assert contains_word(prompts, responses) == [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    assert contains_word(prompts, responses, case_sensitive=True) == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert contains_word(["", ""], ["the cat sat", "concatenate"], word="cat") == [1.0, 0.0]
    # regex metacharacters in the word are literal
    assert contains_word(["", "", ""], ["I write C++.", "C", "Cxx"], word="C++") == [1.0, 0.0, 0.0]


def test_short_reward_values():
    responses = ["", "   ", "a" * 5, "a" * 10, "  " + "a" * 10 + "  ", "a" * 12, "a" * 15, "a" * 20, "a" * 35]
    # 0 -> 0; whitespace-only -> 0; 5, 10 (<= max) -> 1; stripped 10 -> 1;
    # 12 -> 1 - 2/10 = 0.8; 15 (1.5x) -> 1 - 5/10 = 0.5; 20 (2x) -> 0; 35 -> max(0, -1.5) = 0
    out = short([""] * len(responses), responses, max_chars=10)
    close(out, [0.0, 0.0, 1.0, 1.0, 1.0, 0.8, 0.5, 0.0, 0.0], atol=1e-12)
    # default max_chars = 40: 60 chars = 1.5x -> 0.5
    assert short([""], ["b" * 60]) == [0.5]


def test_load_reward_fn():
    assert load_reward_fn("short") is short
    assert load_reward_fn("contains_word") is contains_word
    assert load_reward_fn("llm.rl.rewards:short") is short
    fn = load_reward_fn("llm.rl.rewards:contains_word")
    assert fn(["p"], ["Python!"], word="python") == [1.0]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("no_such_module_xyz_123:fn", "cannot load"),
        ("llm.rl.rewards:no_such_fn", "cannot load"),
        ("not_a_builtin", "module.path:function"),
        ("llm.rl.rewards.short", "module.path:function"),
        ("llm.rl.rewards:BUILTIN", "not callable"),
    ],
)
def test_load_reward_fn_errors(spec, fragment):
    with pytest.raises(ValueError, match=fragment) as e:
        load_reward_fn(spec)
    assert spec in str(e.value)
