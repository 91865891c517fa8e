"""One PPO iteration's experience, typed: what the rollout phase hands the update phase.

B prompts (left-padded to P tokens) and their responses (right-padded to R tokens). The code
that makes an :class:`Experience` (``PPOStage.make_experience``: generate, score, evaluate) and
the code that trains on it (``PPOStage.update``) meet only here; the arithmetic between them
(:func:`kl_penalised_rewards`, GAE) is pure functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields

import torch


@dataclass
class Rollout:
    """Prompts and the policy's sampled (or greedy) responses."""

    prompt_ids: torch.Tensor  # [B, P] long, left-padded
    prompt_mask: torch.Tensor  # [B, P] long, 1 on prompt tokens
    responses: torch.Tensor  # [B, R] long, pad after the first stop token
    response_mask: torch.Tensor  # [B, R] long, 1 up to and including the first stop token
    ended: torch.Tensor  # [B] bool, the response reached a stop token within R
    texts: list[str]  # B decoded responses (special tokens skipped)
    prompts: list[list[dict]]  # B conversations ({"role", "content"} messages) the prompts render
    logprobs: torch.Tensor | None = None  # [B, R] float, the rollout engine's log-prob of each sampled token (0 on padding)

    @property
    def sequences(self) -> torch.Tensor:  # [B, P + R]
        return torch.cat([self.prompt_ids, self.responses], 1)

    @property
    def attention_mask(self) -> torch.Tensor:  # [B, P + R]
        return torch.cat([self.prompt_mask, self.response_mask], 1)

    @property
    def prompt_len(self) -> int:  # P
        return int(self.prompt_ids.shape[1])


def select_rows(ro: Rollout, rows: Sequence[int]) -> Rollout:
    """The rollout (or a subclass, e.g. an episode rollout) of the rows ``rows``, in that order."""
    idx = list(rows)
    out = {}
    for f in fields(ro):
        v = getattr(ro, f.name)
        if isinstance(v, torch.Tensor):
            out[f.name] = v[torch.tensor(idx, dtype=torch.long, device=v.device)]
        elif isinstance(v, list):
            out[f.name] = [v[i] for i in idx]
        else:
            out[f.name] = v
    return type(ro)(**out)


def concat_rollouts(parts: Sequence[Rollout], pad_id: int) -> Rollout:
    """One rollout of the rows of ``parts`` (all of one type), in order. Prompts stay left-padded
    (``prompt_*`` tensors are padded on the left to the longest), responses right-padded (the other
    [B, T] tensors on the right); padding is ``pad_id`` for token ids, 0 for masks and log-probs.
    A ``None`` field stays ``None`` only if it is ``None`` in every part."""
    if not parts:
        raise ValueError("concat_rollouts: no rollout to join")
    kinds = {type(p) for p in parts}
    if len(kinds) > 1:
        raise TypeError(f"concat_rollouts: rollouts of different kinds {sorted(k.__name__ for k in kinds)}")
    out = {}
    for f in fields(parts[0]):
        vals = [getattr(p, f.name) for p in parts]
        if all(v is None for v in vals):
            out[f.name] = None
        elif any(v is None for v in vals):
            raise ValueError(f"concat_rollouts: field {f.name!r} is None in some rollouts only")
        elif isinstance(vals[0], list):
            out[f.name] = [x for v in vals for x in v]
        elif vals[0].dim() == 2:
            width = max(v.shape[1] for v in vals)
            fill = pad_id if f.name in ("prompt_ids", "responses") else 0
            left = f.name.startswith("prompt_")
            padded = []
            for v in vals:
                pad = v.new_full((v.shape[0], width - v.shape[1]), fill)
                padded.append(torch.cat([pad, v] if left else [v, pad], 1))
            out[f.name] = torch.cat(padded, 0)
        else:
            out[f.name] = torch.cat(vals, 0)
    return type(parts[0])(**out)


@dataclass
class Experience:
    """A rollout with everything the updates need, computed once with the rollout policy."""

    rollout: Rollout
    scores: torch.Tensor  # [B] float, the reward of each whole response
    old_logprobs: torch.Tensor  # [B, R] float, log pi_old of each response token (0 on padding)
    old_values: torch.Tensor  # [B, R] float, the critic's values
    old_entropy: torch.Tensor  # [B, R] float, the policy's entropy at each position
    ref_logprobs: torch.Tensor  # [B, R] float, log pi_ref of each response token
    kl: torch.Tensor  # [B, R] float, the KL estimator per token (0 on padding)
    kl_coef: float  # beta used for ``rewards``
    rewards: torch.Tensor  # [B, R] float, -beta * kl, plus the score on the last response token
    advantages: torch.Tensor  # [B, R] float, GAE (whitened when configured)
    returns: torch.Tensor  # [B, R] float, advantages + values (the critic's targets)
    is_weights: torch.Tensor | None = None  # [B, R] float, TIS weights on the policy loss (None: off)
    engine_stats: dict[str, float] = field(default_factory=dict)  # rollout/* of the log-prob check

    @property
    def mask(self) -> torch.Tensor:  # [B, R] float, response tokens
        return self.rollout.response_mask.float()

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def kl_penalised_rewards(kl: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Per-token rewards [B, R]: ``-kl_coef * kl`` everywhere, plus each row's score [B] on its
    last response token (the last position where ``mask`` is 1; position 0 for an empty row)."""
    rewards = -kl_coef * kl
    last = (mask.sum(1) - 1).clamp(min=0).long()
    rewards[torch.arange(rewards.shape[0], device=rewards.device), last] += scores
    return rewards
