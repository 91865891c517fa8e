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
with its adapters disabled (no second copy in memory). The critic is a value head on the
policy's backbone (``critic=shared``) or a network of its own (``critic=separate``, started from
the reward model, whose head already predicts the score).

Lightning counts an optimizer step each time ``LightningOptimizer.step`` runs; the minibatch
updates of an iteration use the wrapped torch optimizer directly and the iteration ends with
one counted, empty step, so ``trainer.max_steps`` counts iterations (and checkpoints and the
LR schedule step per iteration).

Validation generates greedy responses to held-out prompts and logs their mean score
(``val/reward``): the before/after figure of a run.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from llm.data import builders
from llm.data.chat import stop_token_ids
from llm.data.preference import encode_answer, pad_batch, positions_from_mask
from llm.losses import (
    IGNORE_INDEX,
    entropy_from_logits,
    ppo_policy_loss,
    ppo_value_loss,
    token_logprobs,
)
from llm.model.engine import Engine, Sampling
from llm.model.lora import is_peft
from llm.rl.advantages import gae, masked_mean, masked_var, masked_whiten
from llm.rl.experience import Experience, Rollout, kl_penalised_rewards
from llm.rl.kl import AdaptiveKLController, FixedKLController, kl_estimate
from llm.rl.rewards import load_reward_fn
from llm.stages.base import BaseStage
from llm.stages.registry import Stage
from llm.stages.reward import backbone_and_head, reward_scores

log = logging.getLogger(__name__)


def response_mask(responses: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, R]: 1 up to and including the first stop token; ended [B]: a stop token came)."""
    is_stop = torch.zeros_like(responses, dtype=torch.bool)
    for s in stop_ids:
        is_stop |= responses == s
    # position of the first stop token, R when none
    R = responses.shape[1]
    idx = torch.arange(R, device=responses.device).expand_as(responses)
    first = torch.where(is_stop, idx, torch.full_like(idx, R)).min(-1).values
    mask = (idx <= first.unsqueeze(1)).long()
    return mask, first < R


class RewardModel:
    """A frozen reward-model export with its own tokenizer: scores (prompt, response text)."""

    def __init__(self, path: str, max_tokens: int = 1024) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from llm.data.chat import ensure_chat_template

        self.path = path
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        ensure_chat_template(self.tokenizer)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval().requires_grad_(False)
        self.max_tokens = min(max_tokens, getattr(self.model.config, "max_position_embeddings", max_tokens) or max_tokens)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0

    def to(self, device: torch.device) -> RewardModel:
        self.model.to(device)
        return self

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], responses: list[str]) -> torch.Tensor:
        seqs = []
        for p, r in zip(prompts, responses):
            enc = encode_answer(self.tokenizer, p, r if r.strip() else " ", self.max_tokens)
            seqs.append(enc.ids if enc is not None else [self.pad_id])
        device = next(self.model.parameters()).device
        ids, mask = pad_batch(seqs, self.pad_id, max(len(s) for s in seqs), "right")
        return reward_scores(self.model, ids.to(device), mask.to(device))


class ValueHead(torch.nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.summary = torch.nn.Linear(hidden, 1)
        torch.nn.init.normal_(self.summary.weight, std=1.0 / (hidden + 1))
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.summary(h).squeeze(-1)


class PPOStage(BaseStage):
    # ------------------------------------------------------------------ set-up
    def on_model_ready(self) -> None:
        cfg = self.stage_cfg.ppo
        rcfg = self.stage_cfg.reward
        if not rcfg.model and not rcfg.function:
            raise ValueError(
                "stage=ppo needs a reward: stage.reward.model=<reward-model export> and/or stage.reward.function=<name or module:function>"
            )
        self._frozen: dict[str, Any] = {}  # not submodules: out of checkpoints and the optimizer
        if not is_peft(self.model):
            self._frozen["ref"] = copy.deepcopy(self.model).eval().requires_grad_(False)
        if rcfg.model:
            self._frozen["rm"] = RewardModel(rcfg.model)
        self.reward_fn = load_reward_fn(rcfg.function) if rcfg.function else None
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
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.iteration_samples: list[dict] = []

    def extra_trained_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.value_head, self.critic) if m is not None]

    def optim_modules(self) -> torch.nn.Module:
        extra = self.value_head if self.value_head is not None else self.critic
        return torch.nn.ModuleList([self.model, extra])

    def _place_frozen(self) -> None:
        for v in self._frozen.values():
            v.to(self.device)

    def on_fit_start(self) -> None:
        self._place_frozen()

    # --------------------------------------------------------------- forward passes
    def _policy_forward(
        self,
        seq: torch.Tensor,
        attn: torch.Tensor,
        P: int,
        responses: torch.Tensor,
        rmask: torch.Tensor,
        model: Any = None,
        values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log-probs [B, R] of the response tokens, values [B, R] or None, entropy [B, R])."""
        model = model if model is not None else self.model
        want_hidden = values and self.value_head is not None
        out = model(
            input_ids=seq, attention_mask=attn, position_ids=positions_from_mask(attn), use_cache=False, output_hidden_states=want_hidden
        )
        R = responses.shape[1]
        logits = out.logits[:, P - 1 : P - 1 + R] / self.stage_cfg.ppo.temperature
        targets = responses.masked_fill(rmask == 0, IGNORE_INDEX)
        logp = token_logprobs(logits, targets)
        ent = entropy_from_logits(logits)
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
    def _reference_logprobs(
        self, seq: torch.Tensor, attn: torch.Tensor, P: int, responses: torch.Tensor, rmask: torch.Tensor
    ) -> torch.Tensor:
        if "ref" in self._frozen:
            return self._policy_forward(seq, attn, P, responses, rmask, model=self._frozen["ref"], values=False)[0]
        with self.model.disable_adapter():
            return self._policy_forward(seq, attn, P, responses, rmask, values=False)[0]

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Responses [B, R] to left-padded prompts [B, P], through the one generation engine."""
        cfg = self.stage_cfg.ppo
        sampling = Sampling(cfg.max_new_tokens, do_sample=not greedy, temperature=cfg.temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
        extra = {}
        if self.sharded and self._trainer is not None and self.trainer.world_size > 1:
            extra["synced_gpus"] = True  # FSDP: every rank runs the same number of forward passes (they all-gather)
        return Engine(self.model, self.tokenizer, chat=True).generate(prompt_ids, prompt_mask, sampling, **extra)

    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, prompts: list[list[dict]], greedy: bool = False) -> Rollout:
        """The policy's responses to a batch of prompts, cut after their first stop token."""
        responses = self.generate(prompt_ids, prompt_mask, greedy=greedy)
        if responses.shape[1] == 0:
            responses = torch.full((prompt_ids.shape[0], 1), self.pad_id, device=self.device, dtype=torch.long)
        rmask, ended = response_mask(responses, self.stop_ids)
        responses = responses.masked_fill(rmask == 0, self.pad_id)
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Rollout(prompt_ids, prompt_mask, responses, rmask, ended, texts, prompts)

    @torch.no_grad()
    def score(self, prompts: list[list[dict]], texts: list[str], ended: torch.Tensor) -> torch.Tensor:
        rcfg = self.stage_cfg.reward
        total = torch.zeros(len(texts), device=self.device)
        if "rm" in self._frozen:
            total += rcfg.model_weight * self._frozen["rm"].score(prompts, texts).to(self.device)
        if self.reward_fn is not None:
            last_user = [p[-1]["content"] for p in prompts]
            vals = self.reward_fn(last_user, texts, **dict(rcfg.kwargs))
            if len(vals) != len(texts):
                raise ValueError(f"stage.reward.function returned {len(vals)} rewards for {len(texts)} responses")
            total += rcfg.function_weight * torch.tensor([float(v) for v in vals], device=self.device)
        if rcfg.missing_eos_penalty:
            total -= rcfg.missing_eos_penalty * (~ended).float()
        return total

    def _prompts_of(self, split: str, index: torch.Tensor) -> list[list[dict]]:
        dm = self.trainer.datamodule
        return [dm.prompt_messages(split, int(i)) for i in index.tolist()]

    # ---------------------------------------------------------------- one iteration
    @torch.no_grad()
    def make_experience(self, ro: Rollout, scores: torch.Tensor) -> Experience:
        """Steps 3-5: old and reference log-probs and values, KL-penalised rewards, advantages."""
        cfg = self.stage_cfg.ppo
        seq, attn, P = ro.sequences, ro.attention_mask, ro.prompt_len
        fmask = ro.response_mask.float()
        self.model.eval()
        old_logp, old_values, old_ent = self._policy_forward(seq, attn, P, ro.responses, ro.response_mask)
        self.model.train()
        ref_logp = self._reference_logprobs(seq, attn, P, ro.responses, ro.response_mask)
        kl = kl_estimate(old_logp, ref_logp, cfg.kl_estimator) * fmask
        beta = self.kl_ctl.value
        rewards = kl_penalised_rewards(kl, scores, ro.response_mask, beta)
        adv, returns = gae(rewards, old_values, fmask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            adv = masked_whiten(adv, fmask)
        return Experience(ro, scores, old_logp, old_values, old_ent, ref_logp, kl, beta, rewards, adv, returns)

    def update(self, exp: Experience, opt: Any) -> tuple[dict[str, list[float]], int, bool]:
        """Step 6: ``epochs`` passes of minibatch updates over the experience. Returns (the
        per-update statistics, the number of updates, whether the approximate KL stopped them)."""
        cfg = self.stage_cfg.ppo
        ro = exp.rollout
        seq, attn, P, responses, rmask, fmask = ro.sequences, ro.attention_mask, ro.prompt_len, ro.responses, ro.response_mask, exp.mask
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
                logp, values, ent = self._policy_forward(seq[i], attn[i], P, responses[i], rmask[i])
                m = fmask[i]
                pg, clipfrac, approx_kl = ppo_policy_loss(logp, exp.old_logprobs[i], exp.advantages[i], m, cfg.clip_range)
                vf, vf_clipfrac = ppo_value_loss(values, exp.old_values[i], exp.returns[i], m, cfg.value_clip)
                entropy = masked_mean(ent, m)
                loss = pg + cfg.vf_coef * vf - cfg.entropy_coef * entropy
                with self._no_sync(last=False):  # several updates per step: PPO averages gradients itself
                    self.manual_backward(loss)
                self._average_gradients_over_ranks()
                gn = self._clip_gradients(raw)
                if gn is not None and not torch.isfinite(gn):  # gradients are averaged: every rank sees it
                    raise FloatingPointError(
                        f"PPO iteration {self.global_step + 1}, minibatch update {n_updates + 1}: non-finite gradient norm "
                        f"{gn.item()} (loss {loss.item()} on rank {self.global_rank}); stopped before the update, the last "
                        f"checkpoint is intact (resume with ckpt_path=last, perhaps with a lower stage.optim.lr)"
                    )
                raw.step()
                raw.zero_grad(set_to_none=True)
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
        lr = sched.get_last_lr()[0]
        opt.zero_grad(set_to_none=True)
        opt.step()  # no gradients: changes nothing, makes Lightning count this iteration as one step
        sched.step()
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
            "ppo/clipfrac": _mean(stats["clipfrac"]),
            "ppo/approx_kl": _mean(stats["approx_kl"]),
            "ppo/policy_loss": _mean(stats["pg_loss"]),
            "ppo/value_loss": _mean(stats["vf_loss"]),
            "ppo/value_clipfrac": _mean(stats["vf_clipfrac"]),
            "ppo/explained_variance": float(
                1 - masked_var(exp.returns - exp.old_values, fmask) / masked_var(exp.returns, fmask).clamp(min=1e-8)
            ),
            "ppo/response_length": self._mean_over_ranks(rmask.sum(1).float().mean()),
            "ppo/ended_with_eos": self._mean_over_ranks(ro.ended.float().mean()),
            "ppo/updates": float(n_updates),
            "ppo/early_stopped": float(stopped_early),
            "ppo/grad_norm": _mean(stats["grad_norm"]),
            "train/lr": lr,
            "time/generate_s": t1 - t0,
            "time/score_s": t2 - t1,
            "time/evaluate_s": t3 - t2,
            "time/train_s": t4 - t3,
            "time/generate_tokens_per_s": gen_tokens / max(1e-9, t1 - t0),
        }
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("ppo/score_mean", float(metrics["ppo/score"]), prog_bar=True)
        self._record_samples(prompts, ro.texts, scores)
        self.after_step()
        return torch.tensor(float(metrics["ppo/score"]))

    def _average_gradients_over_ranks(self) -> None:
        """DDP synchronises gradients only in the backward that follows its forward; PPO runs many
        backward passes in one training step, so it averages the gradients over ranks itself."""
        if self.trainer.world_size <= 1 or self.sharded:  # FSDP reduce-scatters in every backward
            return
        import torch.distributed as dist

        grads = [p.grad for p in self.optim_modules().parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.trainer.world_size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def on_train_end(self) -> None:
        """Every rank must end with the same weights: a cheap check that gradients were in sync."""
        if self.trainer.world_size <= 1 or self.sharded:  # FSDP: each rank holds its own shard
            return
        total = torch.stack([p.detach().double().sum() for p in self.optim_modules().parameters()]).sum().reshape(1)
        every = self.all_gather(total).reshape(-1)
        if (every.max() - every.min()).abs() > 1e-6 * every.abs().max().clamp(min=1.0):
            raise RuntimeError(f"PPO: the ranks' weights diverged (parameter sums {every.tolist()})")

    def _mean_over_ranks(self, x: torch.Tensor) -> float:
        x = x.detach().float()
        if self.trainer.world_size > 1:
            x = self.trainer.strategy.reduce(x.clone(), reduce_op="mean")
        return float(x)

    def _record_samples(self, prompts: list[list[dict]], texts: list[str], scores: torch.Tensor) -> None:
        every = self.stage_cfg.ppo.log_samples_every
        it = self.global_step  # already counts this iteration
        if not every or (it - 1) % every or not self.trainer.is_global_zero:
            return
        rows = [
            {"iteration": it, "prompt": p[-1]["content"], "response": t, "score": float(s)}
            for p, t, s in zip(prompts[:4], texts[:4], scores[:4])
        ]
        self.iteration_samples.extend(rows)
        run_dir = Path(self.trainer.default_root_dir)
        with open(run_dir / "samples.jsonl", "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        for lg in self.trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.log_text(
                    key="ppo/samples",
                    columns=["iteration", "prompt", "response", "score"],
                    data=[[r["iteration"], r["prompt"], r["response"], r["score"]] for r in self.iteration_samples],
                    step=it,
                )

    # ---------------------------------------------------------------- validation
    def on_validation_start(self) -> None:
        self._place_frozen()

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


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


_NOT_UNDER_DEEPSPEED = (
    "PPO takes several optimizer steps per iteration (its minibatch updates), with gradients it averages itself and "
    "generation between them, while DeepSpeed's engine owns the gradients and the step; under ZeRO-3 every generated "
    "token would also all-gather the weights (DeepSpeed-Chat needs its Hybrid Engine for this). Run PPO with "
    "strategy=ddp or strategy=fsdp, or use DPO (stage=dpo), which runs under every strategy"
)


def _check(cfg: Any) -> None:
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
    refused_strategies={
        s: _NOT_UNDER_DEEPSPEED for s in ("deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
    },
    check=_check,
)
"""Stage 3b: PPO against a reward model or function, with a KL penalty toward the starting model."""
