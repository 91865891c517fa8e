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
