"""PPO for RLHF (Ziegler et al. 2019; InstructGPT), inside one LightningModule with manual
optimisation.

One training step is one PPO iteration:

1. **rollout** -- the policy samples a response to each prompt of the batch (KV cache;
   temperature, top-p/top-k, ``max_new_tokens``; a response ends at the end-of-turn token);
2. **score** -- the reward model and/or a Python reward function score each (prompt, response);
3. **evaluate** -- log-probs of the response tokens under the policy (the "old" policy) and the
   frozen reference, and the critic's values;
4. **rewards** -- per token ``-beta * KL_t`` (``KL_t`` an estimator of log pi/ref at the sampled
   token) plus the score on the last token; ``beta`` fixed or moved by the adaptive controller
   toward a target KL;
5. **advantages** -- GAE(gamma, lambda) over the response tokens, whitened;
6. **updates** -- ``epochs`` passes over shuffled minibatches: clipped policy loss + ``vf_coef``
   x clipped value loss - ``entropy_coef`` x entropy; an iteration stops early when the
   approximate KL to the rollout policy exceeds ``early_stop_kl``.

The reference is a frozen copy of the starting policy, or, for a LoRA policy, the same model
with its adapters disabled (no second copy in memory): rollouts, the reference and the
minibatch-update mechanics are shared with GRPO (:mod:`llm.stages.rollout`). The critic is a value head on the
policy's backbone (``critic=shared``) or a network of its own (``critic=separate``, started from
the reward model, whose head already predicts the score).

Lightning counts an optimizer step each time ``LightningOptimizer.step`` runs; the minibatch
updates of an iteration use the wrapped torch optimizer directly and the iteration ends with
one counted, empty step, so ``trainer.max_steps`` counts iterations (and checkpoints and the
LR schedule step per iteration). Under DeepSpeed each minibatch update is a step of its engine,
which optimizes the value head or critic with the policy (they are submodules of the stage).

Validation generates greedy responses to held-out prompts and logs their mean score
(``val/reward``): the before/after figure of a run.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from llm.data import builders
from llm.data.preference import positions_from_mask
from llm.losses import ppo_policy_loss, ppo_value_loss
from llm.rl.advantages import gae, masked_mean, masked_var, masked_whiten
from llm.rl.engines import check_rollout_config
from llm.rl.experience import Experience, Rollout, kl_penalised_rewards
from llm.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate
from llm.stages.registry import Stage
from llm.stages.reward import backbone_and_head
from llm.stages.rollout import (
    RewardModel,
    RolloutStage,
    mean,
    model_inputs,
    response_mask,
    timing_metrics,
)

log = logging.getLogger(__name__)


__all__ = ["STAGE", "PPOStage", "RewardModel", "response_mask"]


class ValueHead(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.summary.weight, std=1.0 / (hidden + 1))
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.summary(h).squeeze(-1)


class PPOStage(RolloutStage):
    stage_label, rl_key = "PPO", "ppo"

    # ------------------------------------------------------------------ set-up
    def on_model_ready(self) -> None:
        cfg = self.stage_cfg.ppo
        rcfg = self.stage_cfg.reward
        if not rcfg.model and not rcfg.function and not rcfg.functions and not rcfg.judge.url:
            raise ValueError(
                "stage=ppo needs a reward: stage.reward.model=<reward-model export> and/or stage.reward.function=<name or module:function> "
                "(or stage.reward.functions), and/or stage.reward.judge.url=<OpenAI-compatible endpoint>"
            )
        self.setup_rollout()
        self.setup_reward_sources()
        hidden = self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd
        self.value_head: ValueHead | None = None
        self.critic: torch.nn.Module | None = None
        if cfg.critic == "shared":
            self.value_head = ValueHead(hidden)
        elif cfg.critic == "separate":
            from transformers import AutoModelForSequenceClassification

            from llm.model.build import resolve_pretrained

            src = cfg.critic_model or rcfg.model or self.model_cfg.pretrained
            self.critic = AutoModelForSequenceClassification.from_pretrained(
                str(resolve_pretrained(src)), num_labels=1, dtype=torch.float32
            )
            self.critic.train()
        else:
            raise ValueError(f"stage.ppo.critic={cfg.critic!r}: shared or separate")
        self.kl_ctl = (
            AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon) if cfg.adaptive_kl else FixedKLController(cfg.kl_coef)
        )

    def extra_trained_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.value_head, self.critic) if m is not None]

    def optim_modules(self) -> torch.nn.Module:
        extra = self.value_head if self.value_head is not None else self.critic
        return torch.nn.ModuleList([self.model, extra])

    # --------------------------------------------------------------- forward passes
    def _policy_forward(
        self, ro: Rollout, rows: torch.Tensor | None = None, values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log-probs [B, R] of the response tokens of ``ro`` (its ``rows``), values [B, R] or
        None, entropy [B, R])."""
        want_hidden = values and self.value_head is not None
        logp, ent, out = self.response_logprobs(ro, rows, output_hidden_states=want_hidden)
        seq, attn, P, responses, _ = model_inputs(ro, rows)
        R = responses.shape[1]
        v = None
        if values:
            if self.value_head is not None:
                v = self.value_head(out.hidden_states[-1][:, P - 1 : P - 1 + R].float())
            else:
                backbone, head = backbone_and_head(self.critic)
                h = backbone(input_ids=seq, attention_mask=attn, position_ids=positions_from_mask(attn), use_cache=False).last_hidden_state
                v = head(h[:, P - 1 : P - 1 + R]).squeeze(-1).float()
        return logp, v, ent

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], texts: list[str], ended: torch.Tensor) -> torch.Tensor:
        rcfg = self.stage_cfg.reward
        total = torch.zeros(len(texts), device=self.device)
        if "rm" in self._frozen:
            total += rcfg.model_weight * self.model_scores(prompts, texts)
        if self.reward_fn is not None:
            total += rcfg.function_weight * self.function_scores(prompts, texts)
        for name, v in self.rule_components(prompts, texts).items():
            total += self.rule_fns[name][1] * v
        if self.judge is not None:
            total += rcfg.judge.weight * self.judge_scores(prompts, texts)
        if rcfg.missing_eos_penalty:
            total -= rcfg.missing_eos_penalty * (~ended).float()
        return total

    # ---------------------------------------------------------------- one iteration
    @torch.no_grad()
    def make_experience(self, ro: Rollout, scores: torch.Tensor) -> Experience:
        """Steps 3-5: old and reference log-probs and values, KL-penalised rewards, advantages."""
        cfg = self.stage_cfg.ppo
        fmask = ro.response_mask.float()
        self.model.eval()
        old_logp, old_values, old_ent = self._policy_forward(ro)
        self.model.train()
        is_w, engine_stats = self.engine_check(ro, old_logp)
        ref_logp = self.reference_logprobs(ro)
        kl = kl_estimate(old_logp, ref_logp, cfg.kl_estimator) * fmask
        beta = self.kl_ctl.value
        rewards = kl_penalised_rewards(kl, scores, ro.response_mask, beta)
        adv, returns = gae(rewards, old_values, fmask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, fmask)
        return Experience(ro, scores, old_logp, old_values, old_ent, ref_logp, kl, beta, rewards, adv, returns, is_w, engine_stats)

    def update(self, exp: Experience, opt: Any) -> tuple[dict[str, list[float]], int, bool]:
        """Step 6: ``epochs`` passes of minibatch updates over the experience. Returns (the
        per-update statistics, the number of updates, whether the approximate KL stopped them)."""
        cfg = self.stage_cfg.ppo
        ro = exp.rollout
        fmask = exp.mask
        stats: dict[str, list[float]] = {
            k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approx_kl", "entropy", "grad_norm")
        }
        raw = opt.optimizer if hasattr(opt, "optimizer") else opt
        B = len(exp)
        mb = max(1, min(cfg.minibatch_size, B))
        stopped_early = False
        n_updates = 0
        for _ in range(cfg.epochs):
            perm = torch.randperm(B, device=self.device)
            epoch_kl = []
            for lo in range(0, B, mb):
                i = perm[lo : lo + mb]
                logp, values, ent = self._policy_forward(ro, i)
                m = fmask[i]
                w = exp.is_weights[i] if exp.is_weights is not None else None
                pg, clipfrac, approx_kl = ppo_policy_loss(logp, exp.old_logprobs[i], exp.advantages[i], m, cfg.clip_range, w)
                vf, vf_clipfrac = ppo_value_loss(values, exp.old_values[i], exp.returns[i], m, cfg.value_clip)
                entropy = masked_mean(ent, m)
                loss = pg + cfg.vf_coef * vf - cfg.entropy_coef * entropy
                gn = self.apply_update(loss, raw, n_updates)
                n_updates += 1
                for k, v in (
                    ("pg_loss", pg),
                    ("vf_loss", vf),
                    ("clipfrac", clipfrac),
                    ("vf_clipfrac", vf_clipfrac),
                    ("approx_kl", approx_kl),
                    ("entropy", entropy),
                    ("grad_norm", gn),
                ):
                    if v is not None:
                        stats[k].append(float(v.detach()))
                epoch_kl.append(float(approx_kl))
            if cfg.early_stop_kl is not None and sum(epoch_kl) / len(epoch_kl) > cfg.early_stop_kl:
                stopped_early = True
                break
        return stats, n_updates, stopped_early

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        prompts = self._prompts_of("train", batch["index"])
        t0 = time.perf_counter()
        ro = self.rollout(batch["prompt_ids"], batch["prompt_mask"], prompts)  # 1. rollout
        t1 = time.perf_counter()
        scores = self.score(prompts, ro.texts, ro.ended)  # 2. score
        t2 = time.perf_counter()
        exp = self.make_experience(ro, scores)  # 3-5. evaluate, rewards, advantages
        t3 = time.perf_counter()
        stats, n_updates, stopped_early = self.update(exp, opt)  # 6. updates
        lr = self.count_iteration(opt, sched)
        t4 = time.perf_counter()

        # bookkeeping
        B, fmask, rmask = len(exp), exp.mask, ro.response_mask
        kl_seq = float(self._mean_over_ranks(exp.kl.sum(1).mean()))
        self.kl_ctl.update(kl_seq, B * self.trainer.world_size)
        gen_tokens = int(rmask.sum())
        self.tokens_seen += gen_tokens
        metrics = {
            "ppo/score": self._mean_over_ranks(scores.mean()),
            "ppo/reward": self._mean_over_ranks((exp.rewards * fmask).sum(1).mean()),
            "ppo/kl": kl_seq,
            "ppo/kl_coef": exp.kl_coef,
            "ppo/entropy": self._mean_over_ranks(masked_mean(exp.old_entropy, fmask)),
            "ppo/clipfrac": mean(stats["clipfrac"]),
            "ppo/approx_kl": mean(stats["approx_kl"]),
            "ppo/policy_loss": mean(stats["pg_loss"]),
            "ppo/value_loss": mean(stats["vf_loss"]),
            "ppo/value_clipfrac": mean(stats["vf_clipfrac"]),
            "ppo/explained_variance": float(
                1 - masked_var(exp.returns - exp.old_values, fmask) / masked_var(exp.returns, fmask).clamp(min=1e-8)
            ),
            "ppo/response_length": self._mean_over_ranks(rmask.sum(1).float().mean()),
            "ppo/ended_with_eos": self._mean_over_ranks(ro.ended.float().mean()),
            "ppo/updates": float(n_updates),
            "ppo/early_stopped": float(stopped_early),
            "ppo/grad_norm": mean(stats["grad_norm"]),
            "train/lr": lr,
            **timing_metrics((t0, t1, t2, t3, t4), gen_tokens),
            **exp.engine_stats,
        }
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("ppo/score_mean", float(metrics["ppo/score"]), prog_bar=True)
        self.record_samples(self.stage_cfg.ppo.log_samples_every, prompts, ro.texts, scores, "ppo/samples")
        self.after_step()
        return torch.tensor(float(metrics["ppo/score"]))

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(3, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        prompts = self._prompts_of("val", batch["index"])
        ro = self.rollout(batch["prompt_ids"], batch["prompt_mask"], prompts, greedy=True)
        scores = self.score(prompts, ro.texts, ro.ended)
        self._val += torch.stack([scores.double().sum(), scores.new_tensor(len(ro.texts)).double(), ro.response_mask.sum(1).double().sum()])

    def on_validation_epoch_end(self) -> None:
        s, n, length = self._sum_over_ranks(self._val).tolist()
        if n:
            self.log("val/reward", s / n, prog_bar=True)
            self.log("val/response_length", length / n)

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["kl_ctl"] = self.kl_ctl.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        self._kl_state = checkpoint.get("kl_ctl")

    def on_train_start(self) -> None:
        super().on_train_start()
        st = getattr(self, "_kl_state", None)
        if st:
            self.kl_ctl.load_state_dict(st)
            self._kl_state = None


def _check(cfg: Any) -> None:
    check_rollout_config(cfg, "ppo")
    if cfg.strategy.name == "fsdp" and cfg.stage.ppo.critic == "separate":
        raise ValueError(
            "stage=ppo with stage.ppo.critic=separate under strategy=fsdp: the separate critic is read through "
            "its backbone, outside the forward that FSDP hooks; use stage.ppo.critic=shared (a value head) or strategy=ddp"
        )


STAGE = Stage(
    name="ppo",
    module=PPOStage,
    data=builders.prompt_data,
    eval_suite="sft",
    needs_pretrained=True,
    samples_during_training=False,
    check=_check,
)
"""Stage 3b: PPO against a reward model or function, with a KL penalty toward the starting model."""
