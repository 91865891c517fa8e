"""KL divergence between the policy and the reference, per token, and the controllers that set
the KL penalty coefficient beta.

Estimators of KL(policy || reference) from samples of the policy (Schulman, "Approximating KL
divergence", 2020), with ``log_ratio = logp_policy - logp_ref`` at the sampled tokens:

* ``k1`` = log_ratio                       unbiased, can be negative per token (InstructGPT's penalty)
* ``k2`` = 0.5 * log_ratio**2              biased, low variance, always >= 0
* ``k3`` = exp(-log_ratio) - 1 + log_ratio unbiased and always >= 0
* ``abs`` = |log_ratio|
"""

from __future__ import annotations

import torch


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2, k3 or abs)")


class FixedKLController:
    """beta stays where it was set."""

    def __init__(self, beta: float) -> None:
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Ziegler et al. (2019): move beta so the measured KL approaches ``target``.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``,
    where ``n_steps`` is the number of samples of the batch just seen.
    """

    def __init__(self, beta: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL: target ({target}) and horizon ({horizon}) must be > 0")
        self.value, self.target, self.horizon = float(beta), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
