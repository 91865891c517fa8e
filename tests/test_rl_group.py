"""Group-based policy gradient math (llm.rl.group) against values worked by hand and an
independent autograd reference for GSPO."""

from __future__ import annotations

import math

import pytest
import torch

from llm.rl.group import (
    aggregate,
    as_groups,
    dr_grpo_advantages,
    expand_to_tokens,
    group_advantages,
    grpo_advantages,
    informative_groups,
    kl_penalised_scores,
    overlong_filter,
    overlong_penalty,
    policy_loss,
    refill_groups,
    reinforce_pp_advantages,
    rloo_advantages,
)

LN2 = math.log(2.0)


def close(actual, expected, atol=1e-5):
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert torch.allclose(actual, expected, atol=atol, rtol=0), (actual.tolist(), expected.tolist())


# ============================================================================ groups
def test_as_groups_flat_and_2d_and_errors():
    r = torch.arange(6.0)
    assert as_groups(r, 3).tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert as_groups(r.view(2, 3)).shape == (2, 3)
    with pytest.raises(ValueError, match="do not split into groups of 4"):
        as_groups(r, 4)
    with pytest.raises(ValueError, match="need group_size"):
        as_groups(r)
    with pytest.raises(ValueError, match="group_size=2"):
        as_groups(r.view(2, 3), 2)


# ======================================================================== estimators
def test_grpo_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 3.0]])
    # group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.577350
    #          advantages +-0.5 / 0.577350 = +-0.866025 (sqrt(3) / 2)
    # group 2: mean 0.75, deviations -0.75 (x3), 2.25; squares 3 * 0.5625 + 5.0625 = 6.75,
    #          var 6.75 / 3 = 2.25, std 1.5 -> -0.5, -0.5, -0.5, 1.5
    h = math.sqrt(3) / 2
    close(grpo_advantages(r), [[h, -h, -h, h], [-0.5, -0.5, -0.5, 1.5]])
    # population std of group 1 is 0.5 -> +-1
    close(grpo_advantages(r[:1], unbiased=False), [[1.0, -1.0, -1.0, 1.0]])
    # the flat layout gives the same numbers in the flat shape
    close(grpo_advantages(r.reshape(-1), group_size=4), grpo_advantages(r).reshape(-1))


def test_grpo_equal_rewards_and_single_answer_give_zero_not_nan():
    close(grpo_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])), torch.zeros(2, 3))
    close(grpo_advantages(torch.tensor([[0.7], [0.2]])), [[0.0], [0.0]])  # G = 1


def test_dr_grpo_by_hand():
    # mean 0.75: no division by the std
    close(dr_grpo_advantages(torch.tensor([0.0, 0.0, 0.0, 3.0]), group_size=4), [-0.75, -0.75, -0.75, 2.25])
    close(dr_grpo_advantages(torch.tensor([[2.0, 2.0]])), [[0.0, 0.0]])
    close(dr_grpo_advantages(torch.tensor([[5.0]])), [[0.0]])  # G = 1


def test_rloo_by_hand():
    # i = 0: others (0 + 0 + 3) / 3 = 1 -> 0 - 1 = -1 (same for i = 1, 2); i = 3: others 0 -> 3
    # (= G / (G - 1) * (r - mean) = 4/3 * -0.75 = -1 and 4/3 * 2.25 = 3)
    close(rloo_advantages(torch.tensor([[0.0, 0.0, 0.0, 3.0]])), [[-1.0, -1.0, -1.0, 3.0]])
    close(rloo_advantages(torch.tensor([1.0, 2.0]), group_size=2), [-1.0, 1.0])
    close(rloo_advantages(torch.tensor([[4.0, 4.0, 4.0]])), [[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="at least 2 answers"):
        rloo_advantages(torch.tensor([[1.0], [0.0]]))


def test_reinforce_pp_by_hand():
    r = torch.tensor([[1.0, 0.0], [3.0, 3.0]])
    # group baseline: [0.5, -0.5, 0, 0]; batch mean 0, unbiased var (0.25 + 0.25) / 3 = 1/6,
    # std 0.408248 -> 0.5 / 0.408248 = 1.224745
    close(reinforce_pp_advantages(r), [[1.224745, -1.224745], [0.0, 0.0]])
    # no group baseline: [1, 0, 3, 3], mean 1.75, deviations -0.75 -1.75 1.25 1.25,
    # squares 0.5625 + 3.0625 + 1.5625 + 1.5625 = 6.75, var 2.25, std 1.5
    close(reinforce_pp_advantages(r, group_baseline=False), [[-0.5, -1.166667], [0.833333, 0.833333]])


def test_reinforce_pp_token_level():
    # one group [1, 0] -> baseline [0.5, -0.5]; tokens: 0.5 x3 (answer 0), -0.5 x1 (answer 1)
    # token mean 0.25; deviations 0.25 x3, -0.75; squares 0.1875 + 0.5625 = 0.75, var 0.25, std 0.5
    # whitened: 0.5, 0.5, 0.5 | -1.5, padding 0
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(reinforce_pp_advantages(torch.tensor([1.0, 0.0]), group_size=2, mask=mask), [[0.5, 0.5, 0.5], [-1.5, 0.0, 0.0]])
    with pytest.raises(ValueError, match="mask must be"):
        reinforce_pp_advantages(torch.tensor([1.0, 0.0]), group_size=2, mask=torch.ones(3, 2))


def test_reinforce_pp_single_answer_and_equal_rewards():
    close(reinforce_pp_advantages(torch.tensor([[2.0]])), [[0.0]])
    close(reinforce_pp_advantages(torch.tensor([[1.0, 1.0], [1.0, 1.0]])), torch.zeros(2, 2))


def test_group_advantages_by_name():
    r = torch.tensor([[0.0, 0.0, 0.0, 3.0]])
    close(group_advantages("rloo", r), rloo_advantages(r))
    close(group_advantages("grpo", r, eps=0.0), [[-0.5, -0.5, -0.5, 1.5]])
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages("ppo", r)


def test_expand_to_tokens():
    close(expand_to_tokens(torch.tensor([2.0, -1.0]), torch.tensor([[1, 1, 0], [1, 0, 0]])), [[2.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])


# ================================================================= shaping, filters
def test_informative_groups():
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.5]])
    assert informative_groups(r).tolist() == [False, True, False]
    assert informative_groups(r.reshape(-1), group_size=3).tolist() == [False, True, False]
    # a spread of 0.01 is within atol=0.05
    assert informative_groups(torch.tensor([[0.5, 0.51]]), atol=0.05).tolist() == [False]
    assert informative_groups(torch.tensor([[1.0], [0.0]])).tolist() == [False, False]  # G = 1


def test_refill_groups_by_hand():
    """DAPO's refill: informative groups in round order up to the batch size, then the batch's own
    uninformative groups; extra rounds' uninformative groups are never used."""
    T, F = True, False
    # round 0: groups 1 and 3 informative; round 1: group 0; round 2: groups 0 and 2
    rounds = [torch.tensor([F, T, F, T]), torch.tensor([T, F, F, F]), torch.tensor([T, F, T, F])]
    assert refill_groups(rounds, 4) == [(0, 1), (0, 3), (1, 0), (2, 0)]
    # not enough anywhere: round 0's uninformative groups fill up, in order
    assert refill_groups(rounds[:2], 4) == [(0, 1), (0, 3), (1, 0), (0, 0)]
    # nothing informative: the batch as it was
    assert refill_groups([torch.tensor([F, F])], 2) == [(0, 0), (0, 1)]
    # already full: no extra round is needed or used
    assert refill_groups([torch.tensor([T, T]), torch.tensor([T, T])], 2) == [(0, 0), (0, 1)]


def test_rollouts_join_with_prompts_left_padded_and_answers_right_padded():
    from llm.rl.env import EpisodeRollout
    from llm.rl.experience import Rollout, concat_rollouts, select_rows

    a = Rollout(
        prompt_ids=torch.tensor([[7, 8], [0, 9]]),
        prompt_mask=torch.tensor([[1, 1], [0, 1]]),
        responses=torch.tensor([[5, 2, 0], [6, 0, 0]]),
        response_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]),
        ended=torch.tensor([True, False]),
        texts=["a", "b"],
        prompts=[[{"role": "user", "content": "x"}], [{"role": "user", "content": "y"}]],
        logprobs=torch.tensor([[-0.5, -0.25, 0.0], [-1.0, 0.0, 0.0]]),
    )
    b = Rollout(
        prompt_ids=torch.tensor([[3, 4, 5]]),
        prompt_mask=torch.tensor([[1, 1, 1]]),
        responses=torch.tensor([[9]]),
        response_mask=torch.tensor([[1]]),
        ended=torch.tensor([True]),
        texts=["c"],
        prompts=[[{"role": "user", "content": "z"}]],
        logprobs=torch.tensor([[-2.0]]),
    )
    j = concat_rollouts([select_rows(a, [1]), b, select_rows(a, [0])], pad_id=0)
    assert j.prompt_ids.tolist() == [[0, 0, 9], [3, 4, 5], [0, 7, 8]]
    assert j.prompt_mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]
    assert j.responses.tolist() == [[6, 0, 0], [9, 0, 0], [5, 2, 0]]
    assert j.response_mask.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 0]]
    assert j.logprobs.tolist() == [[-1.0, 0.0, 0.0], [-2.0, 0.0, 0.0], [-0.5, -0.25, 0.0]]
    assert j.ended.tolist() == [False, True, True] and j.texts == ["b", "c", "a"]
    assert [p[0]["content"] for p in j.prompts] == ["y", "z", "x"]
    # an engine without log-probs in one part only is an error, not a silent zero
    with pytest.raises(ValueError, match="logprobs"):
        concat_rollouts([a, Rollout(**{**vars(b), "logprobs": None})], pad_id=0)
    # an episode rollout keeps its kind and its per-episode fields
    ep = EpisodeRollout(
        **{k: v for k, v in vars(a).items()},
        token_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
        turns=torch.tensor([2, 1]),
        tool_calls=torch.tensor([1, 0]),
        transcripts=[[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
    )
    two = concat_rollouts([select_rows(ep, [1]), select_rows(ep, [0])], pad_id=0)
    assert isinstance(two, EpisodeRollout) and two.turns.tolist() == [1, 2] and two.token_mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_overlong_penalty_by_hand():
    # max_len 10, cache 4: free up to 6 tokens, then (6 - L) / 4 down to -1 at 10, -1 beyond
    lengths = torch.tensor([3, 6, 7, 8, 10, 12])
    close(overlong_penalty(lengths, max_len=10, cache=4), [0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    # cache = max_len: linear from 0 tokens
    close(overlong_penalty(torch.tensor([0, 5]), max_len=10, cache=10), [0.0, -0.5])
    with pytest.raises(ValueError, match="cache"):
        overlong_penalty(lengths, max_len=10, cache=0)


def test_overlong_filter():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 1, 1]])
    out = overlong_filter(mask, torch.tensor([True, False, False]))
    assert out.tolist() == [[0, 0, 0], [1, 1, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="truncated must be"):
        overlong_filter(mask, torch.tensor([True]))


def test_kl_penalised_scores_by_hand():
    logp = torch.tensor([[-1.0, -2.0], [-1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0], [-1.0, -1.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    # k1 log ratios [[0.5, 0], [0, 1 (padding)]] -> sums 0.5 and 0; scores - 0.1 * sums
    close(kl_penalised_scores(torch.tensor([1.0, 0.0]), logp, ref, mask, beta=0.1), [0.95, 0.0])


# ======================================================================= aggregation
def test_aggregate_modes_by_hand():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    close(aggregate(x, mask, "token"), 2.5)  # (1 + 2 + 3 + 4) / 4
    close(aggregate(x, mask, "sequence"), 3.0)  # (mean(1, 2, 3) = 2 + 4) / 2
    close(aggregate(x, mask, "dr_grpo", max_len=5), 1.0)  # 10 / (2 * 5)
    close(aggregate(x, mask, "dr_grpo"), 10.0 / 6.0)  # max_len defaults to T = 3
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate(x, mask, "mean")


def test_aggregate_empty_rows_and_empty_mask():
    # an answer with no tokens does not count in the sequence mean: 1.5, not 0.75
    close(aggregate(torch.tensor([[1.0, 2.0], [9.0, 9.0]]), torch.tensor([[1, 1], [0, 0]]), "sequence"), 1.5)
    x, empty = torch.ones(2, 3), torch.zeros(2, 3)
    for mode in ("token", "sequence", "dr_grpo"):
        close(aggregate(x, empty, mode), 0.0)


# ======================================================================= policy loss
def _lp(ratios):
    """log-probs whose ratio to an old log-prob of -1 is ``ratios``."""
    return torch.tensor([[math.log(r) - 1.0 for r in ratios]], requires_grad=True), torch.full((1, len(ratios)), -1.0)


def test_policy_loss_clip_higher_by_hand():
    logp, old = _lp([1.1, 1.5, 0.5])
    mask = torch.ones(1, 3)
    # A = +1, bounds [0.8, 1.28]: per token -min(s, clip(s)):
    #   1.1 -> -1.1; 1.5 -> clipped to -1.28 (high); 0.5 -> -0.5 (the pessimistic bound is s itself)
    #   token mean -(1.1 + 1.28 + 0.5) / 3 = -0.96
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2, eps_high=0.28)
    close(loss, -0.96)
    close(st["clip_frac"], 1 / 3)
    close(st["clip_frac_high"], 1 / 3)
    close(st["clip_frac_low"], 0.0)
    close(st["ratio_mean"], 3.1 / 3)
    close(st["ratio_max"], 1.5)
    # gradient d/dlogp_t = -s_t / 3 where unclipped, 0 where clipped
    loss.backward()
    close(logp.grad, [[-1.1 / 3, 0.0, -0.5 / 3]])
    # symmetric 0.2: 1.5 -> 1.2; -(1.1 + 1.2 + 0.5) / 3 = -2.8 / 3
    close(policy_loss(logp, old, torch.tensor([1.0]), mask, eps_low=0.2)[0], -2.8 / 3)


def test_policy_loss_negative_advantage_clips_low():
    logp, old = _lp([1.1, 1.5, 0.5])
    # A = -1: per token max(s, clip(s)): 1.1; 1.5 (unclipped); 0.5 -> 0.8 (clipped low)
    loss, st = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 3), eps_low=0.2, eps_high=0.28)
    close(loss, 3.4 / 3)
    close(st["clip_frac_low"], 1 / 3)
    close(st["clip_frac_high"], 0.0)


def test_policy_loss_aggregations_by_hand():
    # ratios 1 everywhere, so the per-token loss is -A; answer 0 has 2 tokens (A = 1), answer 1 has
    # 1 token (A = -3); padding of answer 1 holds junk that must not count
    logp = torch.tensor([[-1.0, -2.0], [-0.5, 7.0]])
    old = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -3.0])
    close(policy_loss(logp, old, adv, mask, agg="token")[0], 1 / 3)  # (-1 - 1 + 3) / 3
    close(policy_loss(logp, old, adv, mask, agg="sequence")[0], 1.0)  # (-1 + 3) / 2
    close(policy_loss(logp, old, adv, mask, agg="dr_grpo", max_len=4)[0], 1 / 8)  # 1 / (2 * 4)
    # per-token advantages [N, T] give the same as per-answer ones spread over the tokens
    close(policy_loss(logp, old, expand_to_tokens(adv, mask), mask)[0], 1 / 3)


def test_gspo_sequence_ratio_by_hand():
    # token ratios 4 and 1: geometric mean 2, the same at both tokens
    logp, old = _lp([4.0, 1.0])
    mask = torch.ones(1, 2)
    loss, st = policy_loss(logp, old, torch.tensor([1.0]), mask, ratio="sequence", agg="sequence", eps_low=0.2)
    close(st["ratio_mean"], 2.0)
    close(loss, -1.2)  # clipped at 1 + 0.2
    close(st["clip_frac"], 1.0)
    loss.backward()
    close(logp.grad, [[0.0, 0.0]])  # clipped: no gradient
    # unclipped: loss -s = -2; d(-s)/dlogp_t = -s / |y| = -1 at each token
    logp.grad = None
    loss, _ = policy_loss(logp, old, torch.tensor([1.0]), mask, ratio="sequence", agg="sequence", eps_low=0.2, eps_high=10.0)
    close(loss, -2.0)
    loss.backward()
    close(logp.grad, [[-1.0, -1.0]])


def test_gspo_matches_sequence_level_reference():
    # GSPO written directly at the sequence level: -mean_i min(s_i A_i, clip(s_i) A_i),
    # s_i = exp(mean over tokens of i of (logp - old)); same value and gradient
    g = torch.Generator().manual_seed(0)
    old = -torch.rand(3, 5, generator=g) * 3
    base = old + (torch.rand(3, 5, generator=g) - 0.5) * 0.02
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    adv = torch.tensor([1.0, -0.5, 2.0])
    a = base.clone().requires_grad_(True)
    loss, _ = policy_loss(a, old, adv, mask, ratio="sequence", agg="sequence", eps_low=3e-3, eps_high=4e-3)
    loss.backward()
    b = base.clone().requires_grad_(True)
    m = mask.float()
    s = torch.exp(((b - old) * m).sum(1) / m.sum(1))
    ref = -torch.minimum(s * adv, s.clamp(1 - 3e-3, 1 + 4e-3) * adv).mean()
    ref.backward()
    close(loss, ref.detach(), atol=1e-6)
    close(a.grad, b.grad, atol=1e-6)
    assert (a.grad[mask == 0] == 0).all()


def test_policy_loss_kl_in_loss_by_hand():
    # ratio 1 and A = 0: no policy-gradient term; log(pi / ref) = [ln 2, 0]
    logp = torch.tensor([[-1.0, -2.0]])
    ref = logp - torch.tensor([[LN2, 0.0]])
    mask = torch.ones(1, 2)
    # k3 = e^-x - 1 + x: at ln 2: 0.5 - 1 + 0.693147 = 0.193147; at 0: 0 -> token mean 0.096574
    loss, st = policy_loss(logp, logp.clone(), torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=0.1)
    close(st["kl"], 0.096574)
    close(loss, 0.0096574)
    # k1: (ln 2 + 0) / 2
    loss, st = policy_loss(logp, logp.clone(), torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=1.0, kl_estimator="k1")
    close(loss, LN2 / 2)
    # kl_coef 0 with a reference: the KL is reported, not added
    loss, st = policy_loss(logp, logp.clone(), torch.tensor([0.0]), mask, ref_logp=ref)
    close(loss, 0.0)
    close(st["kl"], 0.096574)
    with pytest.raises(ValueError, match="needs ref_logp"):
        policy_loss(logp, logp.clone(), torch.tensor([0.0]), mask, kl_coef=0.1)


def test_policy_loss_empty_mask_and_errors():
    logp = torch.randn(2, 3, requires_grad=True)
    loss, st = policy_loss(logp, logp.detach() - 1.0, torch.tensor([1.0, -1.0]), torch.zeros(2, 3), ref_logp=torch.zeros(2, 3), kl_coef=0.1)
    assert torch.isfinite(loss) and loss.item() == 0.0
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in st.values())
    for kw, match in (({"ratio": "seq"}, "unknown ratio"), ({"eps_low": -0.1}, "clip bounds"), ({"agg": "x"}, "unknown loss aggregation")):
        with pytest.raises(ValueError, match=match):
            policy_loss(logp, logp.detach(), torch.tensor([1.0, 1.0]), torch.ones(2, 3), **kw)
