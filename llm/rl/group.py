"""Group-based policy gradient without a critic (GRPO family): advantage estimators over groups
of answers to the same prompt, reward shaping and filters, and the clipped policy loss.

Shapes: ``B`` prompts, ``G`` answers per prompt (the group), ``N = B * G`` answers in all, each
right-padded to ``T`` tokens. Rewards come either as ``[B, G]`` or flat ``[N]`` with
``group_size=G`` (answers of one prompt consecutive, as a rollout of ``G`` samples per prompt lays
them out); an estimator returns the same shape it was given. Token tensors are ``[N, T]`` with
``mask[n, t] = 1`` on the response tokens of answer ``n``.

Estimators (one scalar advantage per answer):

* ``grpo``         ``(r - mean_g) / (std_g + eps)``          DeepSeekMath (Shao et al. 2024)
* ``dr_grpo``      ``r - mean_g``                             Dr. GRPO (Liu et al. 2025): no std
* ``rloo``         ``r - mean of the other G-1``              RLOO (Ahmadian et al. 2024)
* ``reinforce_pp`` ``r - mean_g``, then whitened over the     REINFORCE++-baseline (Hu 2025)
                   whole batch (``group_baseline=False``:
                   ``r`` whitened over the batch, REINFORCE++)

Loss (:func:`policy_loss`): PPO's clipped surrogate with asymmetric bounds ``[1 - eps_low,
1 + eps_high]`` (DAPO's clip-higher), on per-token ratios or GSPO's sequence ratio, aggregated
per token (DAPO, the default), per sequence (GRPO's original) or by a constant (Dr. GRPO), with
an optional KL-to-reference term (``llm.rl.kl`` estimators).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from llm.rl.advantages import masked_mean, masked_sum, masked_whiten
from llm.rl.kl import kl_estimate

ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_pp")
AGGREGATIONS = ("token", "sequence", "dr_grpo")
RATIOS = ("token", "sequence")


# ---------------------------------------------------------------------------------- groups
def as_groups(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """``rewards`` as ``[B, G]``: a 2-d tensor as it is (``group_size`` must match when given), a
    flat ``[N]`` one cut into consecutive groups of ``group_size``."""
    if rewards.dim() == 2:
        if group_size is not None and rewards.shape[1] != group_size:
            raise ValueError(f"rewards are [B={rewards.shape[0]}, G={rewards.shape[1]}] but group_size={group_size}")
        return rewards
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be [B, G] or flat [N] with group_size; got shape {tuple(rewards.shape)}")
    if group_size is None or group_size < 1:
        raise ValueError(f"flat rewards [N={rewards.shape[0]}] need group_size >= 1 (got {group_size})")
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _group_std(r: torch.Tensor, unbiased: bool) -> torch.Tensor:  # [B, G] -> [B, 1]
    if r.shape[1] < 2:  # one answer: no spread (an unbiased std would be nan)
        return torch.zeros(r.shape[0], 1, dtype=r.dtype, device=r.device)
    return r.std(dim=1, keepdim=True, correction=1 if unbiased else 0)


def grpo_advantages(rewards: torch.Tensor, group_size: int | None = None, eps: float = 1e-6, unbiased: bool = True) -> torch.Tensor:
    """GRPO: each reward less its group's mean, over its group's std (Bessel-corrected, as TRL
    and veRL compute it; ``unbiased=False`` for the population std). A group whose rewards are all
    equal, or of one answer, gets advantage 0 (``0 / (0 + eps)``)."""
    r = as_groups(rewards, group_size).float()  # [B, G]
    adv = (r - r.mean(dim=1, keepdim=True)) / (_group_std(r, unbiased) + eps)  # [B, G]
    return adv.view(rewards.shape)


def dr_grpo_advantages(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """Dr. GRPO: reward less its group's mean, no std scaling (which favours groups that are
    almost all right or all wrong)."""
    r = as_groups(rewards, group_size).float()  # [B, G]
    return (r - r.mean(dim=1, keepdim=True)).view(rewards.shape)


def rloo_advantages(rewards: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """RLOO: reward less the mean of the *other* answers of its group,
    ``r_i - (sum_g r - r_i) / (G - 1) = G / (G - 1) * (r_i - mean_g)``. Needs ``G >= 2``."""
    r = as_groups(rewards, group_size).float()  # [B, G]
    G = r.shape[1]
    if G < 2:
        raise ValueError("RLOO needs at least 2 answers per prompt (group_size >= 2): the leave-one-out baseline of one answer is empty")
    baseline = (r.sum(dim=1, keepdim=True) - r) / (G - 1)  # [B, G]
    return (r - baseline).view(rewards.shape)


def reinforce_pp_advantages(
    rewards: torch.Tensor,
    group_size: int | None = None,
    group_baseline: bool = True,
    mask: torch.Tensor | None = None,
    eps: float = 1e-8,
) -> torch.Tensor:
    """REINFORCE++: a batch-normalised baseline. With ``group_baseline`` (REINFORCE++-baseline,
    as OpenRLHF's ``reinforce_baseline``) the group mean is subtracted first; then the result is
    whitened (mean 0, unbiased std 1) over the whole batch, not per group.

    Without ``mask`` the statistics are over the ``N`` answers and the result has the shape of
    ``rewards``. With a token ``mask`` [N, T] each answer's advantage is spread over its tokens
    and whitened over all response tokens (longer answers weigh more, as OpenRLHF does); the
    result is [N, T], 0 on padding."""
    r = as_groups(rewards, group_size).float()  # [B, G]
    if group_baseline:
        r = r - r.mean(dim=1, keepdim=True)
    flat = r.reshape(-1)  # [N]
    if mask is None:
        return masked_whiten(flat, torch.ones_like(flat), eps=eps).view(rewards.shape)
    if mask.dim() != 2 or mask.shape[0] != flat.shape[0]:
        raise ValueError(f"mask must be [N={flat.shape[0]}, T]; got shape {tuple(mask.shape)}")
    return masked_whiten(expand_to_tokens(flat, mask), mask, eps=eps)  # [N, T]


def group_advantages(estimator: str, rewards: torch.Tensor, group_size: int | None = None, **kwargs) -> torch.Tensor:
    """The estimator named ``estimator`` (one of :data:`ESTIMATORS`)."""
    fns = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages, "reinforce_pp": reinforce_pp_advantages}
    if estimator not in fns:
        raise ValueError(f"unknown advantage estimator {estimator!r} (one of {', '.join(ESTIMATORS)})")
    return fns[estimator](rewards, group_size, **kwargs)


def expand_to_tokens(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One advantage per answer [N] (or [B, G]) put on each of its response tokens: [N, T]."""
    return advantages.reshape(-1, 1).to(torch.float32) * mask.to(torch.float32)


# ------------------------------------------------------------------- shaping and filtering
def informative_groups(rewards: torch.Tensor, group_size: int | None = None, atol: float = 0.0) -> torch.Tensor:
    """DAPO's dynamic sampling: ``[B]`` bool, True for a group whose rewards are not all equal
    (within ``atol``). A group of equal rewards has zero advantage under every group estimator and
    gives no gradient; drop it, or sample more prompts until a batch is full of informative ones.
    A group of one answer is never informative."""
    r = as_groups(rewards, group_size)  # [B, G]
    spread = r.max(dim=1).values - r.min(dim=1).values  # [B]
    return spread > atol


def refill_groups(informative: Sequence[torch.Tensor], want: int) -> list[tuple[int, int]]:
    """DAPO's dynamic-sampling refill: the groups that make a batch of ``want``.
    ``informative[r]`` ``[B_r]`` bool marks the informative groups of sampling round ``r`` (round
    0: the batch's own prompts; later rounds: extra prompts). Returns ``(round, group)`` pairs: the
    informative groups in order of rounds, up to ``want``; when there are fewer, the batch's own
    uninformative groups fill the rest in order (they stay out of the loss, as with ``drop``)."""
    picked = [(r, int(g)) for r, inf in enumerate(informative) for g in torch.nonzero(inf).flatten().tolist()][:want]
    if len(picked) < want:
        picked += [(0, int(g)) for g in torch.nonzero(~informative[0]).flatten().tolist()][: want - len(picked)]
    return picked


def overlong_penalty(lengths: torch.Tensor, max_len: int, cache: int) -> torch.Tensor:
    """DAPO's soft overlong punishment, added to the reward: 0 up to ``max_len - cache`` tokens,
    then falling linearly to -1 at ``max_len``, and -1 beyond it::

        L <= max_len - cache             0
        max_len - cache < L <= max_len   (max_len - cache - L) / cache
        L > max_len                      -1

    ``lengths`` [N] response lengths in tokens; returns [N] float."""
    if not 0 < cache <= max_len:
        raise ValueError(f"overlong penalty: need 0 < cache ({cache}) <= max_len ({max_len})")
    L = lengths.to(torch.float32)
    pen = ((max_len - cache) - L) / cache
    return pen.clamp(min=-1.0, max=0.0)


def overlong_filter(mask: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """DAPO's overlong filtering: the token ``mask`` [N, T] with the rows of truncated answers
    (``truncated`` [N] bool: cut at the length limit before a stop token) set to 0, so they add
    nothing to the loss -- a truncated answer is not necessarily a wrong one."""
    if truncated.shape != mask.shape[:1]:
        raise ValueError(f"truncated must be [N={mask.shape[0]}]; got shape {tuple(truncated.shape)}")
    return mask * (~truncated.bool()).to(mask.dtype).unsqueeze(1)


def kl_penalised_scores(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, beta: float, kind: str = "k1"
) -> torch.Tensor:
    """KL in the reward: each answer's score [N] less ``beta`` times its summed per-token KL
    estimate to the reference (``logp``, ``ref_logp``, ``mask`` [N, T]). Apply before the group
    estimator; the alternative is ``kl_coef`` in :func:`policy_loss`."""
    kl = kl_estimate(logp, ref_logp, kind)  # [N, T]
    return scores - beta * masked_sum(kl, mask.to(kl.dtype), dim=-1).detach()


# -------------------------------------------------------------------------------- the loss
def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str = "token", max_len: int | None = None) -> torch.Tensor:
    """Reduce a per-token quantity ``x`` [N, T] over the response tokens to a scalar:

    * ``token``: ``sum(x * mask) / sum(mask)`` (DAPO: every token of the batch weighs the same)
    * ``sequence``: the mean over each answer's tokens, then the mean over answers with at least
      one token (GRPO's original: each answer weighs the same, so long answers' tokens weigh less)
    * ``dr_grpo``: ``sum(x * mask) / (N * max_len)``, a constant normaliser (``max_len`` defaults
      to ``T``; give the generation budget) so that no length bias enters the gradient.

    An empty mask gives 0."""
    mask = mask.to(x.dtype)
    if mode == "token":
        return masked_mean(x, mask)
    if mode == "sequence":
        per_seq = masked_mean(x, mask, dim=-1)  # [N]
        has = (mask.sum(-1) > 0).to(x.dtype)  # [N]
        return masked_mean(per_seq, has)
    if mode == "dr_grpo":
        denom = x.shape[0] * (x.shape[-1] if max_len is None else max_len)
        if denom <= 0:
            return x.new_zeros(())
        return masked_sum(x, mask) / denom
    raise ValueError(f"unknown loss aggregation {mode!r} (one of {', '.join(AGGREGATIONS)})")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    ratio: str = "token",
    agg: str = "token",
    max_len: int | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "k3",
    is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped policy-gradient loss of the GRPO family; returns ``(loss, stats)``.

    ``logp``, ``old_logp`` [N, T]: log-probs of the sampled tokens under the policy being trained
    and the one that sampled them; ``advantages`` [N] (one per answer) or [N, T]; ``mask`` [N, T].

    Per token ``-min(s * A, clip(s, 1 - eps_low, 1 + eps_high) * A)`` where ``s`` is

    * ``ratio="token"``: ``exp(logp - old_logp)`` at that token (PPO, GRPO, DAPO);
    * ``ratio="sequence"``: GSPO's ``exp(mean over the answer's tokens of (logp - old_logp))``,
      the length-normalised (geometric-mean) sequence ratio, the same at every token of the answer
      and clipped as a whole (GSPO uses small bounds, e.g. ``eps_low=3e-4, eps_high=4e-4``). It is
      written in GSPO-token form, ``sg[s] * exp(logp - sg[logp])``, so with ``agg="sequence"`` its
      value and gradient are GSPO's.

    ``eps_high`` defaults to ``eps_low`` (symmetric PPO); DAPO's clip-higher is e.g. 0.2 / 0.28.
    The per-token losses are reduced by :func:`aggregate` (``agg``, ``max_len``). With ``ref_logp``
    and ``kl_coef > 0`` the KL estimate to the reference (``kl_estimator``: k1, k2, k3 or abs),
    reduced the same way, is added times ``kl_coef`` (KL in the loss, GRPO's choice with k3).
    ``is_weights`` [N, T] (truncated importance sampling, :func:`llm.rl.mismatch.tis_weights`)
    multiply each token's policy-gradient term, detached, before aggregation; the KL term is not
    weighted.

    stats (detached scalars): ``clip_frac`` (tokens whose clipped term is the active one),
    ``clip_frac_low`` / ``clip_frac_high`` (of those, below ``1 - eps_low`` with A < 0 / above
    ``1 + eps_high`` with A > 0), ``ratio_mean``, ``ratio_max``, ``approx_kl`` (mean
    ``0.5 * (logp - old_logp)^2``, to the sampling policy), ``pg_loss`` and, with a reference,
    ``kl`` (mean KL estimate to the reference); means are over response tokens."""
    if eps_high is None:
        eps_high = eps_low
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip bounds must be >= 0 (eps_low={eps_low}, eps_high={eps_high})")
    if ratio not in RATIOS:
        raise ValueError(f"unknown ratio {ratio!r} (token, or sequence for GSPO)")
    fmask = mask.to(logp.dtype)  # [N, T]
    adv = advantages.to(logp.dtype)
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)  # [N, 1], broadcast over tokens
    log_ratio = (logp - old_logp) * fmask  # [N, T]
    if ratio == "token":
        log_s = log_ratio
    else:
        seq_log_ratio = masked_mean(log_ratio, fmask, dim=-1)  # [N]
        log_s = seq_log_ratio.detach().unsqueeze(1) + logp - logp.detach()  # [N, T], value = sequence ratio
    s = torch.exp(log_s)  # [N, T]
    unclipped = -adv * s
    clipped = -adv * torch.clamp(s, 1.0 - eps_low, 1.0 + eps_high)
    per_token = torch.maximum(unclipped, clipped)  # [N, T]
    if is_weights is not None:
        per_token = per_token * is_weights.detach().to(per_token.dtype)
    pg_loss = aggregate(per_token, fmask, agg, max_len)
    loss = pg_loss

    sd = s.detach()
    is_clipped = (clipped > unclipped).to(logp.dtype)
    stats = {
        "pg_loss": pg_loss.detach(),
        "clip_frac": masked_mean(is_clipped, fmask),
        "clip_frac_low": masked_mean(is_clipped * (sd < 1.0 - eps_low).to(logp.dtype), fmask),
        "clip_frac_high": masked_mean(is_clipped * (sd > 1.0 + eps_high).to(logp.dtype), fmask),
        "ratio_mean": masked_mean(sd, fmask),
        "ratio_max": (sd * fmask).max() if fmask.sum() > 0 else sd.new_zeros(()),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, fmask),
    }
    if ref_logp is not None:
        kl = kl_estimate(logp, ref_logp, kl_estimator) * fmask  # [N, T]
        stats["kl"] = masked_mean(kl.detach(), fmask)
        if kl_coef:
            loss = loss + kl_coef * aggregate(kl, fmask, agg, max_len)
    elif kl_coef:
        raise ValueError(f"kl_coef={kl_coef} needs ref_logp (the reference's log-probs)")
    return loss, stats
