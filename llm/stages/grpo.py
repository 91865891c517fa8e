"""Group-based policy gradient without a critic (GRPO and its family), inside one LightningModule
with manual optimisation.

One training step is one iteration:

1. **rollout** -- each of the batch's B prompts is answered ``group_size`` (G) times by sampling
   (the prompts repeated, one generation call through the engine);
2. **score** -- each answer's reward is a weighted sum of components, each logged on its own:
   ``correct`` (the task's verifier), ``format`` (an answer in the asked form), ``function``
   (``stage.reward.function``), one per ``stage.reward.functions`` entry (by its name),
   ``model`` (``stage.reward.model``), ``judge`` (``stage.reward.judge``), ``missing_eos`` and
   ``overlong`` (DAPO's soft length penalty);
3. **evaluate** -- log-probs of the answers under the policy that sampled them and, unless
   ``kl=off``, the reference (a frozen copy, or the LoRA policy with its adapters disabled);
4. **advantages** -- from the group (``estimator``: grpo, dr_grpo, rloo, reinforce_pp), after the
   KL penalty when ``kl=reward``; with ``dynamic_sampling=drop`` the groups whose answers all
   got the same reward leave the loss;
5. **updates** -- ``epochs`` passes of ``minibatches`` clipped policy-gradient updates
   (clip-higher, GSPO's sequence ratio, token/sequence/Dr. GRPO aggregation, KL in the loss:
   :func:`llm.rl.group.policy_loss`).

Rollouts, the reference and the counting of one optimizer step per iteration are PPO's
(:mod:`llm.stages.rollout`). Validation answers held-out prompts greedily and logs
``val/reward`` and, with tasks, ``val/accuracy`` (the fraction verified right); with
``val_samples`` it also samples that many answers per held-out task and logs ``val/pass@k``.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import torch

from llm.data.task_prompts import grpo_data
from llm.eval.passk import pass_at_k
from llm.rl.advantages import masked_mean
from llm.rl.engines import check_rollout_config
from llm.rl.env import EpisodeRunner
from llm.rl.experience import Rollout, concat_rollouts, select_rows
from llm.rl.group import (
    group_advantages,
    informative_groups,
    kl_penalised_scores,
    overlong_filter,
    overlong_penalty,
    policy_loss,
    refill_groups,
)
from llm.rl.kl import kl_estimate
from llm.rl.sandbox import SandboxLimits
from llm.rl.tasks import Task, score_responses, verify
from llm.stages.registry import Stage
from llm.stages.rollout import RolloutStage, mean, timing_metrics

log = logging.getLogger(__name__)

POLICY_STATS = ("pg_loss", "clip_frac", "clip_frac_low", "clip_frac_high", "ratio_max", "approx_kl", "grad_norm")


@dataclass
class GroupExperience:
    """An iteration's N = B * G answers with what the updates need (a prompt's G answers consecutive)."""

    rollout: Rollout
    rewards: torch.Tensor  # [N] the rewards the advantages come from (after the KL when kl=reward)
    old_logprobs: torch.Tensor | None  # [N, R] log-probs of the answer tokens under the sampling policy (None: from the update)
    ref_logprobs: torch.Tensor | None  # [N, R] under the reference (None: kl=off)
    entropy: torch.Tensor | None  # [N, R] the sampling policy's entropy at each answer position (None: from the update)
    advantages: torch.Tensor  # [N] one per answer
    loss_mask: torch.Tensor  # [N, R] float: answer tokens that enter the loss
    kept_groups: torch.Tensor  # [B] bool: groups left in the loss by dynamic sampling
    is_weights: torch.Tensor | None = None  # [N, R] TIS weights on the policy loss (None: off)
    engine_stats: dict[str, float] | None = None  # rollout/*: the engine's log-probs against the trainer's


class GRPOStage(RolloutStage):
    stage_label, rl_key = "GRPO", "grpo"

    def on_model_ready(self) -> None:
        self.setup_rollout(reference=self.stage_cfg.grpo.kl != "off")
        self.setup_reward_sources()
        cfg = self.stage_cfg.grpo
        self.episodes = EpisodeRunner.from_config(cfg, self.tokenizer) if cfg.env else None  # multi-turn episodes with tools

    # --------------------------------------------------------------------- rewards
    def _tasks_of(self, split: str, index: torch.Tensor) -> list[Task] | None:
        dm = self.trainer.datamodule
        if not hasattr(dm, "task"):
            return None
        return [dm.task(split, int(i)) for i in index.tolist()]

    @torch.no_grad()
    def reward_components(self, ro: Rollout, tasks: list[Task] | None) -> dict[str, torch.Tensor]:
        """Each component [N] of the answers' reward, unweighted."""
        cfg, rcfg = self.stage_cfg.grpo, self.stage_cfg.reward
        comps: dict[str, torch.Tensor] = {}
        if tasks is not None:  # code tasks: the fraction of tests passed, run in the sandbox
            limits = SandboxLimits(timeout_s=cfg.sandbox_timeout_s, memory_mb=cfg.sandbox_memory_mb)
            correct, formed = score_responses(tasks, ro.texts, limits)
            comps["correct"], comps["format"] = torch.tensor(correct), torch.tensor([float(f) for f in formed])
        if self.reward_fn is not None:
            comps["function"] = self.function_scores(ro.prompts, ro.texts)
        if "rm" in self._frozen:
            comps["model"] = self.model_scores(ro.prompts, ro.texts)
        comps.update(self.rule_components(ro.prompts, ro.texts))
        if self.judge is not None:
            refs = [t.answer or "" for t in tasks] if tasks is not None else None
            comps["judge"] = self.judge_scores(ro.prompts, ro.texts, refs)
        if rcfg.missing_eos_penalty:
            comps["missing_eos"] = (~ro.ended).float()
        if cfg.overlong_cache:
            comps["overlong"] = overlong_penalty(ro.response_mask.sum(1), cfg.max_new_tokens, cfg.overlong_cache)
        return {k: v.to(self.device, torch.float32) for k, v in comps.items()}

    def reward_weights(self) -> dict[str, float]:
        cfg, rcfg = self.stage_cfg.grpo, self.stage_cfg.reward
        return {
            "correct": cfg.correct_weight,
            "format": cfg.format_weight,
            "function": rcfg.function_weight,
            "model": rcfg.model_weight,
            "judge": rcfg.judge.weight,
            "missing_eos": -rcfg.missing_eos_penalty,
            "overlong": 1.0,
            **{name: w for name, (_, w, _) in self.rule_fns.items()},
        }

    def total_reward(self, comps: dict[str, torch.Tensor], n: int) -> torch.Tensor:
        w = self.reward_weights()
        total = torch.zeros(n, device=self.device)
        for k, v in comps.items():
            total += w[k] * v
        return total

    # --------------------------------------------------------------- one iteration
    @torch.no_grad()
    def make_experience(self, ro: Rollout, scores: torch.Tensor) -> GroupExperience:
        """Steps 3-4: the sampling policy's and the reference's log-probs, group advantages, the
        loss mask (dynamic sampling, overlong filter)."""
        cfg = self.stage_cfg.grpo
        G = cfg.group_size
        fmask = ro.response_mask.float()
        old_logp = entropy = is_w = engine_stats = None
        if not self.single_update:
            old_logp, entropy = self.sampling_logprobs(ro)
            is_w, engine_stats = self.engine_check(ro, old_logp)
        ref_logp = self.reference_logprobs(ro) if self.has_reference else None
        rewards = scores
        if cfg.kl == "reward" and ref_logp is not None:
            rewards = kl_penalised_scores(scores, old_logp, ref_logp, fmask, cfg.kl_coef, str(cfg.kl_estimator))
        if cfg.dynamic_sampling != "off":
            kept = informative_groups(scores, G)  # by the task's reward, not the KL-shaped one
        else:
            kept = torch.ones(scores.shape[0] // G, dtype=torch.bool, device=scores.device)
        adv = group_advantages(str(cfg.estimator), rewards, G)
        loss_mask = fmask * kept.repeat_interleave(G).to(fmask.dtype).unsqueeze(1)
        if cfg.overlong_filter:
            loss_mask = overlong_filter(loss_mask, ~ro.ended)
        return GroupExperience(ro, rewards, old_logp, ref_logp, entropy, adv, loss_mask, kept, is_w, engine_stats)

    @property
    def single_update(self) -> bool:
        """One on-policy update per iteration and no KL in the reward: the sampling policy's
        log-probs are that update's own, detached (the ratio is 1; TRL's shortcut), one forward
        pass over the answers less than taking them first."""
        cfg = self.stage_cfg.grpo
        return cfg.epochs == 1 and cfg.minibatches == 1 and cfg.kl != "reward"

    @torch.no_grad()
    def sampling_logprobs(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs [N, R], entropy [N, R]) of the answers under the policy that sampled them."""
        self.model.eval()
        old_logp, entropy, _ = self.response_logprobs(ro)
        self.model.train()
        return old_logp, entropy

    def update(self, exp: GroupExperience, raw: Any) -> tuple[dict[str, list[float]], int]:
        """Step 5: ``epochs`` x ``minibatches`` clipped policy-gradient updates. A minibatch with no
        token in the loss on any rank makes no update (AdamW would still move the weights)."""
        cfg = self.stage_cfg.grpo
        stats: dict[str, list[float]] = {k: [] for k in POLICY_STATS}
        N = exp.advantages.shape[0]
        kl_coef = cfg.kl_coef if cfg.kl == "loss" else 0.0
        n_updates = 0
        for _ in range(cfg.epochs):
            for i in torch.randperm(N, device=self.device).chunk(cfg.minibatches):
                m = exp.loss_mask[i]
                if float(self._sum_over_ranks(m.sum())) == 0:
                    continue
                logp, ent, _ = self.response_logprobs(exp.rollout, i)
                if exp.old_logprobs is None:  # the single update: its own log-probs are the sampling policy's
                    exp.old_logprobs, exp.entropy = torch.empty_like(logp), torch.empty_like(ent)
                    exp.old_logprobs[i], exp.entropy[i] = logp.detach(), ent.detach()
                    exp.is_weights, exp.engine_stats = self.engine_check(exp.rollout, exp.old_logprobs)
                loss, st = policy_loss(
                    logp,
                    exp.old_logprobs[i],
                    exp.advantages[i],
                    m,
                    eps_low=cfg.eps_low,
                    eps_high=cfg.eps_high,
                    ratio="sequence" if cfg.gspo else "token",
                    agg=str(cfg.loss_agg),
                    max_len=cfg.max_new_tokens,
                    ref_logp=exp.ref_logprobs[i] if exp.ref_logprobs is not None else None,
                    kl_coef=kl_coef,
                    kl_estimator=str(cfg.kl_estimator),
                    is_weights=exp.is_weights[i] if exp.is_weights is not None else None,
                )
                gn = self.apply_update(loss, raw, n_updates)
                n_updates += 1
                if gn is not None:
                    st["grad_norm"] = gn
                for k, v in st.items():
                    if k in stats:
                        stats[k].append(float(v.detach()))
        return stats, n_updates

    def sample_and_score(self, batch: dict[str, torch.Tensor]) -> tuple[Rollout, dict[str, torch.Tensor], torch.Tensor, float, float]:
        """Steps 1-2 for a batch of prompts: ``(rollout, reward components, total rewards [N],
        seconds generating, seconds scoring)``; each prompt answered ``group_size`` times."""
        G = self.stage_cfg.grpo.group_size
        index = batch["index"]
        prompts = [p for p in self._prompts_of("train", index) for _ in range(G)]
        tasks = self._tasks_of("train", index)
        tasks = [t for t in tasks for _ in range(G)] if tasks is not None else None
        t0 = time.perf_counter()
        if self.episodes is not None:  # 1. multi-turn: the tool turns are in the sequence, out of the loss
            ro = self.episodes.rollout(self, prompts, tasks)
        else:  # 1.
            ids, mask = batch["prompt_ids"].to(self.device), batch["prompt_mask"].to(self.device)
            ro = self.rollout(ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), prompts)
        t1 = time.perf_counter()
        comps = self.reward_components(ro, tasks)  # 2.
        scores = self.total_reward(comps, len(ro.texts))
        return ro, comps, scores, t1 - t0, time.perf_counter() - t1

    def refill(
        self, ro: Rollout, comps: dict[str, torch.Tensor], scores: torch.Tensor
    ) -> tuple[Rollout, dict[str, torch.Tensor], torch.Tensor, dict[str, float]]:
        """``dynamic_sampling=resample`` (DAPO): while a rank's batch has fewer informative groups
        than prompts, every rank answers ``micro_batch_size`` more training prompts (drawn from the
        whole training split, seeded by the data seed, step, rank and round); the batch becomes the
        first informative groups, then its own uninformative ones if still short. Returns the new
        rollout, components and rewards, and the round count and times."""
        cfg = self.stage_cfg.grpo
        G = cfg.group_size
        B = scores.shape[0] // G
        dm = self.trainer.datamodule
        n_train = len(dm.prompts["train"])
        parts = [(ro, comps, scores)]
        informative = [informative_groups(scores, G)]
        gen_s = score_s = 0.0
        rounds = 0
        while rounds < cfg.max_resample_rounds:
            short = sum(int(k.sum()) for k in informative) < B
            if float(self._sum_over_ranks(torch.tensor(float(short), device=self.device))) == 0:
                break  # every rank is full (all ranks run the same rounds: sharded generation is collective)
            rounds += 1
            rng = random.Random(f"grpo-refill/{dm.seed}/{self.global_step}/{self.global_rank}/{rounds}")
            extra = dm.collate_step("train", [rng.randrange(n_train) for _ in range(B)])
            ro_r, comps_r, scores_r, g_s, s_s = self.sample_and_score(extra)
            gen_s, score_s = gen_s + g_s, score_s + s_s
            parts.append((ro_r, comps_r, scores_r))
            informative.append(informative_groups(scores_r, G))
        extra_tokens = sum(int(p[0].response_mask.sum()) for p in parts[1:])
        stats = {"rounds": float(rounds), "generate_s": gen_s, "score_s": score_s, "extra_tokens": float(extra_tokens)}
        if rounds == 0:
            return ro, comps, scores, stats
        picked = refill_groups(informative, B)
        rows = [range(g * G, (g + 1) * G) for _, g in picked]
        ro = concat_rollouts([select_rows(parts[r][0], rr) for (r, _), rr in zip(picked, rows)], self.pad_id)
        comps = {k: torch.cat([parts[r][1][k][rr.start : rr.stop] for (r, _), rr in zip(picked, rows)]) for k in comps}
        scores = torch.cat([parts[r][2][rr.start : rr.stop] for (r, _), rr in zip(picked, rows)])
        return ro, comps, scores, stats

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        cfg = self.stage_cfg.grpo
        G = cfg.group_size
        opt, sched = self.optimizers(), self.lr_schedulers()
        t0 = time.perf_counter()
        ro, comps, scores, gen_s, score_s = self.sample_and_score(batch)  # 1-2.
        informative_before = informative_groups(scores, G).float().mean()
        refill: dict[str, float] = {}
        if cfg.dynamic_sampling == "resample":
            ro, comps, scores, refill = self.refill(ro, comps, scores)
            gen_s, score_s = gen_s + refill["generate_s"], score_s + refill["score_s"]
        prompts = ro.prompts
        t2 = time.perf_counter()
        t1 = t2 - score_s  # generation (all rounds, with the refill's own overhead), then scoring
        exp = self.make_experience(ro, scores)  # 3-4.
        t3 = time.perf_counter()
        raw = opt.optimizer if hasattr(opt, "optimizer") else opt
        stats, n_updates = self.update(exp, raw)  # 5.
        if exp.old_logprobs is None:  # no update (every group dropped): the log-probs for the metrics
            exp.old_logprobs, exp.entropy = self.sampling_logprobs(ro)
            exp.is_weights, exp.engine_stats = self.engine_check(ro, exp.old_logprobs)
        lr = self.count_iteration(opt, sched)
        t4 = time.perf_counter()

        fmask, rmask = ro.response_mask.float(), ro.response_mask
        gen_tokens = int(rmask.sum()) + int(refill.get("extra_tokens", 0))
        self.tokens_seen += gen_tokens
        metrics: dict[str, float] = {
            "grpo/reward": self._mean_over_ranks(scores.mean()),
            "grpo/reward_std": self._mean_over_ranks(scores.view(-1, G).std(1, correction=0).mean()),
            "grpo/dropped_groups": self._mean_over_ranks(1.0 - exp.kept_groups.float().mean()),
            "grpo/informative_before_refill": self._mean_over_ranks(informative_before),
            "grpo/entropy": self._mean_over_ranks(masked_mean(exp.entropy, fmask)),
            "grpo/response_length": self._mean_over_ranks(rmask.sum(1).float().mean()),
            "grpo/ended_with_eos": self._mean_over_ranks(ro.ended.float().mean()),
            "grpo/updates": float(n_updates),
            "train/lr": lr,
            **timing_metrics((t0, t1, t2, t3, t4), gen_tokens),
            **(exp.engine_stats or {}),
        }
        if cfg.dynamic_sampling == "resample":
            metrics["grpo/resample_rounds"] = refill["rounds"]
        for k, v in comps.items():
            metrics[f"grpo/reward/{k}"] = self._mean_over_ranks(v.mean())
        if "correct" in comps:
            metrics["grpo/accuracy"] = metrics["grpo/reward/correct"]
        if self.episodes is not None:
            metrics.update({f"grpo/{k}": self._mean_over_ranks(v) for k, v in self.episodes.metrics(ro).items()})
        if "judge" in comps:
            metrics["grpo/judge_unparseable"] = self._mean_over_ranks(torch.tensor(self.judge_unparseable_last, device=self.device))
        if exp.ref_logprobs is not None:  # KL of the sampling policy to the reference, per answer token
            kl = kl_estimate(exp.old_logprobs, exp.ref_logprobs, str(cfg.kl_estimator))
            metrics["grpo/kl"] = self._mean_over_ranks(masked_mean(kl, fmask))
        for k in POLICY_STATS:
            metrics[f"grpo/{k}"] = mean(stats[k])
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False)
        self.log("grpo/reward_mean", metrics["grpo/reward"], prog_bar=True)
        texts = ro.transcript_texts() if self.episodes is not None else ro.texts
        self.record_samples(cfg.log_samples_every, prompts, texts, scores, "grpo/samples")
        self.after_step()
        return torch.tensor(metrics["grpo/reward"])

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(4, device=self.device, dtype=torch.float64)
        self._val_has_tasks = False
        # val/pass@k: per-task estimates summed for each k of val_pass_k, then the number of tasks
        self._val_pass = torch.zeros(len(self._val_ks()) + 1, device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        prompts = self._prompts_of("val", batch["index"])
        tasks = self._tasks_of("val", batch["index"])
        if self.episodes is not None:
            ro = self.episodes.rollout(self, prompts, tasks, greedy=True)
        else:
            ro = self.rollout(batch["prompt_ids"], batch["prompt_mask"], prompts, greedy=True)
        comps = self.reward_components(ro, tasks)
        total = self.total_reward(comps, len(ro.texts)).double()
        correct = comps["correct"].double().sum() if "correct" in comps else total.new_zeros(())
        self._val_has_tasks = tasks is not None
        self._val += torch.stack([total.sum(), correct, total.new_tensor(float(len(ro.texts))), ro.response_mask.sum().double()])
        if self.stage_cfg.grpo.val_samples and tasks is not None:
            self._val_pass += self._val_pass_at_k(batch, prompts, tasks, batch_idx)

    def _val_ks(self) -> list[int]:
        return sorted({int(k) for k in self.stage_cfg.grpo.val_pass_k})

    @torch.no_grad()
    def _val_pass_at_k(self, batch: dict[str, torch.Tensor], prompts: list[list[dict]], tasks: list[Task], batch_idx: int) -> torch.Tensor:
        """``val_samples`` sampled answers to each task of a validation batch, verified: the sum over
        the batch's tasks of pass@k for each k of ``val_pass_k``, then the number of tasks. The
        sampling is seeded by (step, rank, batch) and leaves the training RNG as it was."""
        cfg = self.stage_cfg.grpo
        n = cfg.val_samples
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(hash((self.global_step, self.global_rank, batch_idx)) & 0x7FFF_FFFF)
            many_prompts, many_tasks = [p for p in prompts for _ in range(n)], [t for t in tasks for _ in range(n)]
            if self.episodes is not None:  # multi-turn: each sample is a whole episode
                ro = self.episodes.rollout(self, many_prompts, many_tasks, greedy=False)
            else:
                ro = self.rollout(batch["prompt_ids"].repeat_interleave(n, 0), batch["prompt_mask"].repeat_interleave(n, 0), many_prompts)
        right = [verify(t, text) >= 1.0 for t, text in zip(many_tasks, ro.texts, strict=True)]
        counts = [sum(right[i * n : (i + 1) * n]) for i in range(len(tasks))]
        sums = [sum(pass_at_k(n, c, k) for c in counts) for k in self._val_ks()]
        return torch.tensor([*sums, float(len(tasks))], device=self.device, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        s, correct, n, length = self._sum_over_ranks(self._val).tolist()
        if n:
            self.log("val/reward", s / n, prog_bar=True)
            if self._val_has_tasks:
                self.log("val/accuracy", correct / n, prog_bar=True)
            self.log("val/response_length", length / n)
        if self.stage_cfg.grpo.val_samples:
            *sums, n_tasks = self._sum_over_ranks(self._val_pass).tolist()
            if n_tasks:
                for k, v in zip(self._val_ks(), sums):
                    self.log(f"val/pass@{k}", v / n_tasks)


def _check(cfg: Any) -> None:
    g, r = cfg.stage.grpo, cfg.stage.reward
    if not cfg.data.tasks and not r.function and not r.model and not r.functions and not r.judge.url:
        raise ValueError(
            "stage=grpo needs a reward: data.tasks=builtin:<name> or a tasks .jsonl file (verified answers), and/or "
            "stage.reward.function=<name or module:function> (or stage.reward.functions), and/or "
            "stage.reward.model=<reward-model export>, and/or stage.reward.judge.url=<OpenAI-compatible endpoint>"
        )
    n = cfg.data.micro_batch_size * g.group_size
    if g.minibatches > n:
        raise ValueError(
            f"stage.grpo.minibatches={g.minibatches}: more than the {n} answers of an iteration "
            f"(data.micro_batch_size={cfg.data.micro_batch_size} x stage.grpo.group_size={g.group_size})"
        )
    check_rollout_config(cfg, "grpo")


STAGE = Stage(
    name="grpo",
    module=GRPOStage,
    data=grpo_data,
    eval_suite="sft",
    needs_pretrained=True,
    samples_during_training=False,
    check=_check,
)
"""Stage 3c: group-based policy gradient (GRPO family) on verifiable or rule-based rewards."""
