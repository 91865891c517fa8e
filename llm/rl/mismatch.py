"""When the rollout engine and the trainer disagree: the log-prob check and truncated importance
sampling (TIS).

The tokens of a rollout are sampled by the rollout engine (transformers' ``generate`` with a KV
cache, or vLLM with its own kernels and precision), while the policy gradient takes log-probs
from the trainer's full forward pass. Mathematically the same policy, numerically not always: a
different kernel, dtype or batch shape moves the log-probs, and the update becomes off-policy
without saying so (Yao et al. 2025, "Your efficient RL framework secretly brings you off-policy
RL training"). Shapes: ``[N, T]`` per response token, ``mask`` 1 on response tokens.

* :func:`logprob_mismatch` -- how far apart the two are: mean and max ``|logp_trainer -
  logp_engine|`` and the KL from the engine's distribution to the trainer's, estimated on the
  engine's samples (k3: ``exp(r) - 1 - r`` with ``r = logp_trainer - logp_engine``, unbiased
  and >= 0);
* :func:`tis_weights` -- the per-token correction ``min(exp(logp_trainer - logp_engine), C)``,
  detached, that multiplies the policy-gradient loss of each token (verl's
  ``tis_imp_ratio_cap``): the importance weight from the engine's distribution to the trainer's,
  capped at ``C`` so that a token the engine found unlikely cannot dominate the gradient.
"""

from __future__ import annotations

import math

import torch

from llm.rl.advantages import masked_mean
from llm.rl.kl import kl_estimate


def tis_weights(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float = 2.0) -> torch.Tensor:
    """``min(exp(trainer_logp - engine_logp), cap)`` per token [N, T], 0 off the ``mask``;
    detached (a weight on the loss, not a term to differentiate). ``cap >= 1``."""
    if cap < 1.0:
        raise ValueError(f"TIS cap {cap}: must be at least 1")
    log_w = (trainer_logp.detach().float() - engine_logp.detach().float()).clamp(max=math.log(cap))
    fmask = mask.to(torch.float32)
    return torch.exp(log_w * fmask) * fmask  # exp(0) off the mask before zeroing: no inf * 0


def logprob_mismatch(trainer_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Scalars over the response tokens: ``logprob_diff_mean`` and ``logprob_diff_max`` (of
    ``|trainer_logp - engine_logp|``) and ``mismatch_kl`` (k3 estimate of KL(engine || trainer)
    on the engine's samples). All 0 when the mask is empty."""
    fmask = mask.to(torch.float32)
    t, e = trainer_logp.detach().float(), engine_logp.detach().float()
    diff = (t - e).abs() * fmask
    has = fmask.sum() > 0
    return {
        "logprob_diff_mean": masked_mean(diff, fmask),
        "logprob_diff_max": diff.max() if has else diff.new_zeros(()),
        "mismatch_kl": masked_mean(kl_estimate(e, t, "k3") * fmask, fmask),
    }


def tis_stats(weights: torch.Tensor, mask: torch.Tensor, cap: float) -> dict[str, torch.Tensor]:
    """``tis_weight_mean`` (over response tokens) and ``tis_capped_frac`` (tokens whose weight
    reached the cap) of :func:`tis_weights`' output."""
    fmask = mask.to(torch.float32)
    return {
        "tis_weight_mean": masked_mean(weights, fmask),
        "tis_capped_frac": masked_mean((weights >= cap * (1 - 1e-6)).to(torch.float32), fmask),
    }
