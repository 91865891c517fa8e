"""What the on-policy RL stages (PPO, GRPO) share: a frozen reference, rollouts through the
generation engine, log-probs of response tokens, and minibatch updates under manual optimisation.

The reference is a frozen copy of the starting policy, or, for a LoRA policy, the same model with
its adapters disabled (no second copy in memory). A stage that needs no reference (GRPO without a
KL term) asks for none.

Lightning counts an optimizer step each time ``LightningOptimizer.step`` runs; the minibatch
updates of an iteration use the wrapped torch optimizer directly (:meth:`RolloutStage.apply_update`)
and the iteration ends with one counted, empty step (:meth:`RolloutStage.count_iteration`), so
``trainer.max_steps`` counts iterations (and checkpoints and the LR schedule step per iteration).

Under DeepSpeed its engine owns the gradients and the step: each minibatch update is a backward
through the engine at a gradient-accumulation boundary (it reduces the gradients over ranks) and
one step of the engine (it clips and steps); the counted step is then off the boundary, so the
engine updates nothing in it. Under ZeRO-3 a rollout's generation runs with the policy's weights
gathered once and the engine's hooks off (:func:`llm.strategy.gathered_weights`), not gathered at
every generated token. The frozen
reference and reward model are not part of the engine: each rank keeps them whole (no gradients
or optimizer state, 4 bytes a parameter in fp32 against the policy's 16 before sharding; their
forward passes need no communication; a LoRA policy needs no reference copy at all).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from llm.data.chat import stop_token_ids
from llm.data.preference import encode_answer, pad_batch, positions_from_mask
from llm.losses import IGNORE_INDEX, entropy_from_logits, token_logprobs
from llm.model.engine import Sampling
from llm.model.lora import is_peft
from llm.rl.engines import RolloutEngine, make_engine, tis_enabled
from llm.rl.experience import Rollout
from llm.rl.judge import DEFAULT_TEMPLATE, Judge
from llm.rl.mismatch import logprob_mismatch, tis_stats, tis_weights
from llm.rl.rewards import load_reward_fn
from llm.stages.base import BaseStage
from llm.stages.reward import reward_scores
from llm.strategy import engine_step, gathered_weights, is_deepspeed, is_zero3, no_engine_update

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


def model_inputs(ro: Rollout, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int, torch.Tensor, torch.Tensor]:
    """(sequences [B, P + R], their attention mask, P, responses [B, R], response mask [B, R]) of
    a rollout, or of its ``rows``."""
    t = (ro.sequences, ro.attention_mask, ro.responses, ro.response_mask)
    if rows is not None:
        t = tuple(x[rows] for x in t)
    return t[0], t[1], ro.prompt_len, t[2], t[3]


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


RESERVED_COMPONENTS = ("correct", "format", "function", "model", "judge", "missing_eos", "overlong")
"""Reward component names of the stages themselves; ``stage.reward.functions`` entries take others."""


class RolloutStage(BaseStage):
    """A stage that samples its own training data from the policy. Subclasses set
    :attr:`rl_key` and call :meth:`setup_rollout` from ``on_model_ready``."""

    stage_label = "RL"
    """The stage's name in messages."""

    rl_key = ""
    """The stage's own config under ``stage`` (``ppo``, ``grpo``): its ``max_new_tokens``,
    ``temperature``, ``top_k`` and ``top_p`` drive the rollouts."""

    @property
    def rollout_cfg(self) -> Any:
        return self.stage_cfg[self.rl_key]

    def setup_rollout(self, reference: bool = True) -> None:
        """The frozen modules (a reference copy unless the policy is LoRA or ``reference`` is
        off), the stop tokens and the pad id."""
        self._frozen: dict[str, Any] = {}  # not submodules: out of checkpoints and the optimizer
        self.has_reference = reference
        if reference and not is_peft(self.model):
            self._frozen["ref"] = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.iteration_samples: list[dict] = []
        self._engine: RolloutEngine | None = None

    def frozen_copies(self) -> list[torch.nn.Module]:
        return [self._frozen["ref"]] if "ref" in self._frozen else []

    @property
    def rollout_engine(self) -> RolloutEngine:
        """The engine ``stage.rollout.engine`` names (built on first use, with the policy's weights)."""
        if getattr(self, "_engine", None) is None:
            from llm.model.build import resolve_pretrained

            rcfg, cfg = self.stage_cfg.rollout, self.rollout_cfg
            ckpt = str(resolve_pretrained(self.model_cfg.pretrained)) if str(rcfg.engine) == "vllm" and self.model_cfg.pretrained else None
            self._engine = make_engine(
                rcfg,
                self.model,
                self.tokenizer,
                checkpoint=ckpt,
                stop_ids=self.stop_ids,
                pad_id=self.pad_id,
                seed=self.global_rank,
                max_len=cfg.max_prompt_tokens + cfg.max_new_tokens,
            )
            self._engine.sync_weights(self.model)
        return self._engine

    def setup_reward_sources(self) -> None:
        """``stage.reward``'s reward model (frozen), Python reward functions and LLM judge, when set."""
        rcfg = self.stage_cfg.reward
        if rcfg.model:
            self._frozen["rm"] = RewardModel(rcfg.model)
        self.reward_fn = load_reward_fn(rcfg.function) if rcfg.function else None
        self.rule_fns: dict[str, tuple[Any, float, dict]] = {}  # component name -> (function, weight, kwargs)
        for i, f in enumerate(rcfg.functions):
            name = f.name or str(f.function).rpartition(":")[2]
            if name in RESERVED_COMPONENTS or name in self.rule_fns:
                raise ValueError(
                    f"stage.reward.functions[{i}]: component name {name!r} is taken "
                    f"(reserved: {', '.join(RESERVED_COMPONENTS)}; give it a 'name')"
                )
            self.rule_fns[name] = (load_reward_fn(f.function), float(f.weight), dict(f.kwargs))
        j = rcfg.judge
        self.judge = None
        if j.url:
            self.judge = Judge(
                j.url,
                j.model,
                prompt_template=j.prompt_template or DEFAULT_TEMPLATE,
                max_score=j.max_score,
                api_key_env=j.api_key_env,
                timeout=j.timeout,
                retries=j.retries,
                max_concurrency=j.max_concurrency,
                max_tokens=j.max_tokens,
            )
            log.info("judge reward: %s (weight %g)", self.judge.client.name, j.weight)
        self.judge_unparseable_last = 0.0

    def rule_components(self, prompts: list[list[dict]], texts: list[str]) -> dict[str, torch.Tensor]:
        """Each ``stage.reward.functions`` entry's scores [B] (by component name), unweighted."""
        last_user = [p[-1]["content"] for p in prompts]
        out = {}
        for name, (fn, _, kwargs) in self.rule_fns.items():
            vals = fn(last_user, texts, **kwargs)
            if len(vals) != len(texts):
                raise ValueError(f"stage.reward.functions {name!r} returned {len(vals)} rewards for {len(texts)} responses")
            out[name] = torch.tensor([float(v) for v in vals], device=self.device)
        return out

    def judge_scores(self, prompts: list[list[dict]], texts: list[str], answers: list[str] | None = None) -> torch.Tensor:
        """The judge's score [B] in [0, 1] of each (last user turn, response, reference answer);
        sets :attr:`judge_unparseable_last` to the fraction of replies with no score."""
        before = self.judge.unparseable
        vals = self.judge.score([p[-1]["content"] for p in prompts], texts, answers)
        self.judge_unparseable_last = (self.judge.unparseable - before) / max(1, len(texts))
        return torch.tensor(vals, device=self.device, dtype=torch.float32)

    def model_scores(self, prompts: list[list[dict]], texts: list[str]) -> torch.Tensor:
        """The reward model's score [B] of each (prompt, response), unweighted."""
        return self._frozen["rm"].score(prompts, texts).to(self.device)

    def function_scores(self, prompts: list[list[dict]], texts: list[str]) -> torch.Tensor:
        """``stage.reward.function`` [B] of each (last user turn, response), unweighted."""
        last_user = [p[-1]["content"] for p in prompts]
        vals = self.reward_fn(last_user, texts, **dict(self.stage_cfg.reward.kwargs))
        if len(vals) != len(texts):
            raise ValueError(f"stage.reward.function returned {len(vals)} rewards for {len(texts)} responses")
        return torch.tensor([float(v) for v in vals], device=self.device)

    def _place_frozen(self) -> None:
        for v in self._frozen.values():
            v.to(self.device)

    def on_fit_start(self) -> None:
        self._place_frozen()
        self.rollout_engine.sync_weights(self.model)  # the policy as the strategy placed it (and as a resume loaded it)

    def on_validation_start(self) -> None:
        self._place_frozen()

    # --------------------------------------------------------------- forward passes
    def response_logprobs(
        self, ro: Rollout, rows: torch.Tensor | None = None, model: Any = None, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """(log-probs [B, R] of the response tokens of ``ro`` (its ``rows``, default all) at the
        sampling temperature, entropy [B, R], the model's output)."""
        seq, attn, P, responses, rmask = model_inputs(ro, rows)
        out = (model if model is not None else self.model)(
            input_ids=seq,
            attention_mask=attn,
            position_ids=positions_from_mask(attn),
            use_cache=False,
            output_hidden_states=output_hidden_states,
        )
        R = responses.shape[1]
        logits = out.logits[:, P - 1 : P - 1 + R] / self.rollout_cfg.temperature
        targets = responses.masked_fill(rmask == 0, IGNORE_INDEX)
        return token_logprobs(logits, targets), entropy_from_logits(logits), out

    @torch.no_grad()
    def reference_logprobs(self, ro: Rollout) -> torch.Tensor:
        """Log-probs of the response tokens under the reference: the frozen copy, or the policy
        with its LoRA adapters disabled."""
        if not self.has_reference:
            raise RuntimeError(f"{self.stage_label}: no reference model was set up")
        if "ref" in self._frozen:
            return self.response_logprobs(ro, model=self._frozen["ref"])[0]
        with self.model.disable_adapter():
            return self.response_logprobs(ro)[0]

    def generate_with_logprobs(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, greedy: bool = False, logprobs: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(responses [B, R] to left-padded prompts [B, P], the rollout engine's log-prob [B, R] of
        each sampled token or ``None``), through ``stage.rollout.engine``, woken for it and put
        back to sleep after."""
        cfg, rcfg = self.rollout_cfg, self.stage_cfg.rollout
        temperature = rcfg.engine_temperature or cfg.temperature
        sampling = Sampling(cfg.max_new_tokens, do_sample=not greedy, temperature=temperature, top_k=cfg.top_k or None, top_p=cfg.top_p)
        extra = {}
        gather_once = self.zero3 and bool(rcfg.zero3_gather)
        if self.generate_in_step and not gather_once:
            # every rank runs the same number of forward passes: FSDP and ZeRO-3 per token all-gather in them (and ZeRO-3's
            # hooks record the order of the modules' forwards, checked to be the same on every rank)
            extra["synced_gpus"] = True
        gathered = gathered_weights(self.trainer.strategy, self.model) if gather_once else contextlib.nullcontext()
        engine = self.rollout_engine
        engine.wake()
        try:
            with gathered:
                return engine.generate(prompt_ids, prompt_mask, sampling, logprobs=logprobs and bool(rcfg.logprob_check), **extra)
        finally:
            engine.sleep()

    @property
    def zero3(self) -> bool:
        """The stage runs under DeepSpeed ZeRO-3 (its weights partitioned over the ranks)."""
        return self._trainer is not None and is_zero3(self.trainer.strategy)

    @property
    def deepspeed(self) -> bool:
        """The stage runs under DeepSpeed: its engine owns the gradients and the optimizer step."""
        return self._trainer is not None and is_deepspeed(self.trainer.strategy)

    @property
    def generate_in_step(self) -> bool:
        """Every rank must make the same generation calls: the weights are sharded (FSDP, ZeRO-3)
        and gathering them is a collective (per layer and token, or once per call)."""
        return (self.sharded or self.zero3) and self._trainer is not None and self.trainer.world_size > 1

    def generate(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, greedy: bool = False) -> torch.Tensor:
        """Responses [B, R] to left-padded prompts [B, P], through the rollout engine."""
        return self.generate_with_logprobs(prompt_ids, prompt_mask, greedy=greedy, logprobs=False)[0]

    def rollout(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, prompts: list[list[dict]], greedy: bool = False) -> Rollout:
        """The policy's responses to a batch of prompts, cut after their first stop token, with
        the engine's sampling log-probs (not for greedy answers)."""
        responses, logprobs = self.generate_with_logprobs(prompt_ids, prompt_mask, greedy=greedy, logprobs=not greedy)
        if responses.shape[1] == 0:
            responses = torch.full((prompt_ids.shape[0], 1), self.pad_id, device=self.device, dtype=torch.long)
            logprobs = torch.zeros(responses.shape, device=self.device) if logprobs is not None else None
        rmask, ended = response_mask(responses, self.stop_ids)
        responses = responses.masked_fill(rmask == 0, self.pad_id)
        if logprobs is not None:
            logprobs = logprobs.to(self.device, torch.float32) * rmask
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        return Rollout(prompt_ids, prompt_mask, responses, rmask, ended, texts, prompts, logprobs)

    @torch.no_grad()
    def engine_check(self, ro: Rollout, trainer_logp: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Compare the rollout engine's log-probs of the sampled tokens with the trainer's
        (``trainer_logp`` [B, R], the "old" log-probs): ``rollout/logprob_diff_mean``,
        ``rollout/logprob_diff_max``, ``rollout/mismatch_kl`` (llm/rl/mismatch.py); with TIS on,
        the importance weights [B, R] for the policy loss and ``rollout/tis_weight_mean``,
        ``rollout/tis_capped_frac``. ``(None, {})`` when the engine gave no log-probs."""
        if ro.logprobs is None:
            return None, {}
        rcfg, m = self.stage_cfg.rollout, ro.response_mask
        stats = logprob_mismatch(trainer_logp, ro.logprobs, m)
        weights = None
        if tis_enabled(rcfg):
            weights = tis_weights(trainer_logp, ro.logprobs, m, rcfg.tis_cap)
            stats.update(tis_stats(weights, m, rcfg.tis_cap))
        out = {f"rollout/{k}": self._mean_over_ranks(v) for k, v in stats.items() if k != "logprob_diff_max"}
        dmax = stats["logprob_diff_max"].detach().float().reshape(1)
        out["rollout/logprob_diff_max"] = float(self.all_gather(dmax).max()) if self.trainer.world_size > 1 else float(dmax)
        return weights, out

    def _prompts_of(self, split: str, index: torch.Tensor) -> list[list[dict]]:
        dm = self.trainer.datamodule
        return [dm.prompt_messages(split, int(i)) for i in index.tolist()]

    # ---------------------------------------------------------------- updates
    def apply_update(self, loss: torch.Tensor, raw: Any, n_updates: int) -> torch.Tensor | None:
        """One minibatch update with the raw torch optimizer ``raw``: backward, gradients averaged
        over ranks, clipped, checked, stepped. Returns the gradient norm (``None``: no clipping).
        Under DeepSpeed: a backward through its engine at a gradient-accumulation boundary (the
        engine reduces the gradients over ranks) and one step of the engine (clipped inside)."""
        if self.deepspeed:
            return self._engine_update(loss, n_updates)
        with self._no_sync(last=False):  # several updates per step: the stage averages gradients itself
            self.manual_backward(loss)
        self._average_gradients_over_ranks()
        gn = self._clip_gradients(raw)
        if gn is not None and not torch.isfinite(gn):  # gradients are averaged: every rank sees it
            raise FloatingPointError(
                f"{self.stage_label} iteration {self.global_step + 1}, minibatch update {n_updates + 1}: non-finite gradient norm "
                f"{gn.item()} (loss {loss.item()} on rank {self.global_rank}); stopped before the update, the last "
                f"checkpoint is intact (resume with ckpt_path=last, perhaps with a lower stage.optim.lr)"
            )
        raw.step()
        raw.zero_grad(set_to_none=True)
        return gn

    def _engine_update(self, loss: torch.Tensor, n_updates: int) -> torch.Tensor | None:
        with self._no_sync(last=True):  # a boundary: this backward's gradients are reduced and stepped at once
            self.manual_backward(loss)
        gn = engine_step(self.trainer.strategy)
        if gn is not None and not torch.isfinite(gn):  # the engine's norm is of the reduced gradients: every rank sees it
            raise FloatingPointError(
                f"{self.stage_label} iteration {self.global_step + 1}, minibatch update {n_updates + 1}: non-finite gradient norm "
                f"{gn.item()} (loss {loss.item()} on rank {self.global_rank}); under DeepSpeed the norm is known only after its "
                "step, so this update was applied: resume from the last checkpoint (ckpt_path=last), perhaps with a lower stage.optim.lr"
            )
        return gn

    def count_iteration(self, opt: Any, sched: Any) -> float:
        """End an iteration: one counted, empty optimizer step and one LR-schedule step. Returns
        the learning rate the iteration used."""
        lr = sched.get_last_lr()[0]
        opt.zero_grad(set_to_none=True)
        no_engine_update(self.trainer.strategy)  # DeepSpeed: the counted step is not an update
        opt.step()  # no gradients: changes nothing, makes Lightning count this iteration as one step
        sched.step()
        self.rollout_engine.sync_weights(self.model)  # the next rollouts come from the updated policy
        return lr

    def _average_gradients_over_ranks(self) -> None:
        """DDP synchronises gradients only in the backward that follows its forward; an RL stage runs
        many backward passes in one training step, so it averages the gradients over ranks itself."""
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
        if self.trainer.world_size <= 1 or self.sharded or self.zero3:  # FSDP, ZeRO-3: each rank holds its own shard
            return
        total = torch.stack([p.detach().double().sum() for p in self.optim_modules().parameters()]).sum().reshape(1)
        every = self.all_gather(total).reshape(-1)
        if (every.max() - every.min()).abs() > 1e-6 * every.abs().max().clamp(min=1.0):
            raise RuntimeError(f"{self.stage_label}: the ranks' weights diverged (parameter sums {every.tolist()})")

    def _mean_over_ranks(self, x: torch.Tensor) -> float:
        x = x.detach().float()
        if self.trainer.world_size > 1:
            x = self.trainer.strategy.reduce(x.clone(), reduce_op="mean")
        return float(x)

    # ---------------------------------------------------------------- samples
    def record_samples(self, every: int, prompts: list[list[dict]], texts: list[str], scores: torch.Tensor, key: str) -> None:
        """Every ``every`` iterations (rank 0): the first 4 (prompt, response, score) rows to
        ``samples.jsonl`` in the run directory and a W&B table ``<key>``."""
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
                    key=key,
                    columns=["iteration", "prompt", "response", "score"],
                    data=[[r["iteration"], r["prompt"], r["response"], r["score"]] for r in self.iteration_samples],
                    step=it,
                )


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def timing_metrics(stamps: tuple[float, float, float, float, float], gen_tokens: int) -> dict[str, float]:
    """``time/*`` of an iteration from its time stamps: start, generated, scored, evaluated, trained."""
    t0, t1, t2, t3, t4 = stamps
    return {
        "time/generate_s": t1 - t0,
        "time/score_s": t2 - t1,
        "time/evaluate_s": t3 - t2,
        "time/train_s": t4 - t3,
        "time/generate_tokens_per_s": gen_tokens / max(1e-9, t1 - t0),
    }
