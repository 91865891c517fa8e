"""Pure loss functions: tensors in, tensors out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def token_nll_sum(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of next-token negative log-likelihoods and the number of real (non-ignored) tokens.

    ``logits`` [..., T, V] and ``labels`` [..., T] are already aligned (labels[t] is the token
    that follows position t). The sum, not the mean, is returned so that a caller can
    normalise by the number of real tokens across micro-batches and ranks.
    """
    logits = logits.reshape(-1, logits.size(-1)).float()
    labels = labels.reshape(-1)
    nll = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return nll, (labels != ignore_index).sum()


# ------------------------------------------------------------------------- RLHF
def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[..., t] | ...) from aligned ``logits`` [..., T, V]: [..., T]. Positions whose
    token is ``IGNORE_INDEX`` give 0. Computed as a cross-entropy (no [T, V] log-softmax copy)."""
    shape = tokens.shape
    lp = -F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), tokens.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    return lp.view(shape)


def sequence_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over each sequence of the log-probabilities of its labelled tokens: [B]."""
    return token_logprobs(logits, labels).sum(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax distribution at every position: [..., T]."""
    logits = logits.float()
    logz = torch.logsumexp(logits, dim=-1)
    return logz - (torch.softmax(logits, dim=-1) * logits).sum(-1)


def pairwise_reward_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float = 0.0) -> torch.Tensor:
    """Bradley-Terry loss of a reward model per pair: ``-log sigmoid(r_c - r_r - margin)`` [B]
    (InstructGPT; Llama 2 adds the margin)."""
    return -F.logsigmoid(r_chosen - r_rejected - margin)


def pairwise_accuracy(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per pair: 1 where the chosen answer's reward is higher, 0 where lower, 0.5 for a tie [B]
    (a tie is a coin flip, not a miss: DPO's rewards are all 0 at step 0, which reads 0.5)."""
    return (r_chosen > r_rejected).to(r_chosen.dtype) + 0.5 * (r_chosen == r_rejected).to(r_chosen.dtype)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Direct preference optimisation (Rafailov et al. 2023) per pair, from sequence log-probs.

    ``logits = beta * ((pi_c - ref_c) - (pi_r - ref_r))``; loss ``-log sigmoid(logits)``
    (conservative DPO with ``label_smoothing`` eps: ``(1-eps)*that + eps*(-log sigmoid(-logits))``).
    Returns (loss [B], chosen reward [B], rejected reward [B]), rewards = beta * log-ratio.
    When the policy equals the reference the loss is ln 2."""
    chosen_reward = beta * (policy_chosen - ref_chosen)
    rejected_reward = beta * (policy_rejected - ref_rejected)
    logits = chosen_reward - rejected_reward
    loss = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return loss, chosen_reward.detach(), rejected_reward.detach()


def ipo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Identity preference optimisation (Azar et al. 2023) per pair: a squared loss that pulls the
    log-ratio margin ``h = (pi_c - ref_c) - (pi_r - ref_r)`` to ``1 / (2 beta)`` instead of
    pushing it to infinity, ``(h - 1 / (2 beta))**2``; here ``beta`` is the paper's tau, and a
    smaller one asks for a larger margin. The paper uses sequence log-probs; TRL feeds per-token
    averages (divide by the lengths before calling). Returns (loss [B], chosen reward [B],
    rejected reward [B]) with rewards ``beta * (pi - ref)`` as for :func:`dpo_loss`."""
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    loss = (h - 1.0 / (2.0 * beta)) ** 2
    return loss, (beta * (policy_chosen - ref_chosen)).detach(), (beta * (policy_rejected - ref_rejected)).detach()


def simpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    chosen_len: torch.Tensor,
    rejected_len: torch.Tensor,
    beta: float = 2.0,
    gamma: float = 0.5,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024), reference-free: the implicit reward is the length-normalised
    log-prob ``beta * logp / |y|`` and the loss ``-log sigmoid(r_c - r_r - gamma)`` with a target
    margin ``gamma`` (absolute here; TRL's ``gamma_beta_ratio`` is ``gamma / beta``).
    ``policy_*`` are summed sequence log-probs [B], ``*_len`` their token counts [B] (a count
    below 1 counts as 1). ``label_smoothing`` eps mixes in the flipped label as cDPO does.
    Returns (loss [B], chosen reward [B], rejected reward [B])."""
    chosen_reward = beta * policy_chosen / chosen_len.to(policy_chosen.dtype).clamp(min=1)
    rejected_reward = beta * policy_rejected / rejected_len.to(policy_rejected.dtype).clamp(min=1)
    logits = chosen_reward - rejected_reward - gamma
    loss = -F.logsigmoid(logits) * (1 - label_smoothing) - F.logsigmoid(-logits) * label_smoothing
    return loss, chosen_reward.detach(), rejected_reward.detach()


def kto_reference_point(policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: an estimate of KL(policy || reference) from sequence log-probs
    [B] of *mismatched* pairs (each prompt with another example's completion), ``max(0,
    mean(policy - ref))``, detached (no gradient flows through it). Average it across ranks
    before use when training data-parallel."""
    return (policy_mismatched - ref_mismatched).mean().clamp(min=0).detach()


def kto_loss(
    policy_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    desirable: torch.Tensor,
    reference_point: torch.Tensor | float,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired thumbs-up/down data.

    ``policy_logp``, ``ref_logp`` [B]: sequence log-probs of each completion; ``desirable`` [B]
    bool (thumbs up); ``reference_point`` z0 from :func:`kto_reference_point` (clamped at 0,
    detached). With ``r = pi - ref``, a desirable example's loss is ``lambda_D * (1 - sigmoid(beta
    * (r - z0)))`` and an undesirable one's ``lambda_U * (1 - sigmoid(beta * (z0 - r)))``; set the
    weights so that ``lambda_D * n_D / (lambda_U * n_U)`` lies in [1, 4/3] (the paper's advice).
    At the reference (r = 0, z0 = 0) every loss is half its weight. Returns (loss [B], reward
    ``beta * r`` [B])."""
    z0 = torch.as_tensor(reference_point, dtype=policy_logp.dtype, device=policy_logp.device).detach().clamp(min=0)
    r = policy_logp - ref_logp
    up = desirable.to(torch.bool)
    loss = torch.where(
        up,
        desirable_weight * (1 - torch.sigmoid(beta * (r - z0))),
        undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r))),
    )
    return loss, (beta * r).detach()


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (Schulman et al. 2017), averaged over the response tokens.

    ``ratio = exp(logp - old_logp)``; per token ``max(-A * ratio, -A * clip(ratio, 1-c, 1+c))``,
    times ``is_weights`` (detached; truncated importance sampling, llm/rl/mismatch.py) when given.
    Returns (loss, clip fraction, approximate KL(old || new) = mean 0.5 * (logp - old_logp)^2)."""
    from llm.rl.advantages import masked_mean

    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights.detach().to(per_token.dtype)
    loss = masked_mean(per_token, mask)
    clipfrac = masked_mean((clipped > unclipped).to(logp.dtype), mask)
    approx_kl = masked_mean(0.5 * log_ratio**2, mask)
    return loss, clipfrac.detach(), approx_kl.detach()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss: ``0.5 * mean(max((V - R)^2, (V_clipped - R)^2))`` with
    ``V_clipped = old_V + clip(V - old_V, -c, c)``. Returns (loss, value clip fraction)."""
    from llm.rl.advantages import masked_mean

    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    l1 = (values - returns) ** 2
    l2 = (v_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(l1, l2), mask)
    clipfrac = masked_mean((l2 > l1).to(values.dtype), mask)
    return loss, clipfrac.detach()
