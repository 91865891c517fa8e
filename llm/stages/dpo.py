"""Preference optimisation without RL: DPO (Rafailov et al. 2023) and its variants, chosen by
``stage.dpo.loss`` (the losses are pure functions in llm/losses.py):

* ``dpo``: per pair, with sequence log-probs of the answer's tokens under the policy and a frozen
  reference, ``-log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``; at step 0 the policy is
  the reference and the loss is ln 2. ``label_smoothing`` makes it cDPO.
* ``ipo``: ``((pi_c - ref_c) - (pi_r - ref_r) - 1 / (2 beta))**2``, a target margin.
* ``simpo``: reference-free, ``-log sigmoid(beta * (pi_c / |c| - pi_r / |r|) - gamma)``; no
  reference is built or kept.
* ``kto``: unpaired examples (llm/data/preference.py), each scored against a reference point
  z0, the KL(policy || reference) estimated from mismatched prompt/answer pairs of the
  micro-batch (averaged over ranks, no gradient).

The reference (all but SimPO) is, in order of preference:

* ``stage.dpo.precompute_ref=true``: its log-probs of every pair, computed once before training
  by the starting model and kept as numbers (in checkpoints too); no second model in memory,
  which is what ZeRO-3 users want;
* with LoRA: the same base with the adapters disabled (no second copy);
* otherwise a frozen copy of the starting model.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from llm.data import builders
from llm.data.preference import positions_from_mask
from llm.losses import IGNORE_INDEX, dpo_loss, ipo_loss, kto_loss, kto_reference_point, pairwise_accuracy, sequence_logprobs, simpo_loss
from llm.model.lora import is_peft
from llm.stages.base import BaseStage
from llm.stages.registry import Stage

log = logging.getLogger(__name__)


def answer_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] summed log-probs of the labelled (answer) tokens; positions come from the mask."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)
    return sequence_logprobs(out.logits, labels)


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """[B] the number of labelled (answer) tokens of each sequence."""
    return (labels != IGNORE_INDEX).sum(-1)


def resolved(cfg: Any) -> dict[str, Any]:
    """``stage.dpo`` with each ``None`` replaced by the loss's usual value (see DPOConfig)."""
    loss = str(cfg.loss)
    return {
        "loss": loss,
        "beta": float(cfg.beta) if cfg.beta is not None else (2.0 if loss == "simpo" else 0.1),
        "gamma": float(cfg.gamma) if cfg.gamma is not None else 0.5,
        "length_norm": bool(cfg.length_norm) if cfg.length_norm is not None else loss == "simpo",
        "reference": loss != "simpo",
    }


class DPOStage(BaseStage):
    unit = "pairs"

    def on_model_ready(self) -> None:
        cfg = self.stage_cfg.dpo
        self.pref = resolved(cfg)
        self._ref: list[Any] = []  # a list: not a submodule, so not in checkpoints or the optimizer
        self.ref_logps: dict[str, torch.Tensor] = {}
        if cfg.precompute_ref or is_peft(self.model) or not self.pref["reference"]:
            return
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._ref.append(ref)

    def frozen_copies(self) -> list[torch.nn.Module]:
        return list(self._ref)

    def on_fit_start(self) -> None:
        if self._ref:
            self._ref[0].to(self.device)

    # ------------------------------------------------------------ reference
    @torch.no_grad()
    def _reference(self, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._ref:
            return answer_logprobs(self._ref[0], ids, mask, labels)
        was = self.model.training
        self.model.eval()
        try:
            if is_peft(self.model):
                with self.model.disable_adapter():
                    return answer_logprobs(self.model, ids, mask, labels)
            return answer_logprobs(self.model, ids, mask, labels)
        finally:
            self.model.train(was)

    def precompute_reference(self, dm: Any) -> None:
        """Reference log-probs of every pair of both splits, by the model as it is now (before the
        first step). Every rank computes all of them (one forward pass over the data)."""
        for split in ("train", "val"):
            if split in self.ref_logps or not dm.has_split(split):
                continue
            n = len(dm.pairs[split])
            table = torch.zeros(n, 2, dtype=torch.float64)
            for lo in range(0, n, dm.mb):
                b = dm.collate_micro(split, list(range(lo, min(n, lo + dm.mb))))
                b = {k: v.to(self.device) for k, v in b.items()}
                for k, side in enumerate(dm.sides):
                    table[lo : lo + len(b["index"]), k] = (
                        self._reference(b[f"{side}_ids"], b[f"{side}_mask"], b[f"{side}_labels"]).double().cpu()
                    )
            self.ref_logps[split] = table
            log.info("DPO: precomputed reference log-probs of %d %s %s", n, split, dm.unit_name)

    def _ensure_reference(self) -> None:
        if self.stage_cfg.dpo.precompute_ref and len(self.ref_logps) < 2:
            dm = self.trainer.datamodule
            self.precompute_reference(dm)

    def on_train_start(self) -> None:
        super().on_train_start()
        self._ensure_reference()

    def on_validation_start(self) -> None:
        self._ensure_reference()

    # ------------------------------------------------------------ the loss
    def count_tokens(self, micro: dict[str, torch.Tensor]) -> torch.Tensor:
        return micro["valid"].sum()

    def _ref_logps(
        self,
        micro: dict[str, torch.Tensor],
        sides: tuple[str, str],
        ids: torch.Tensor,
        mask: torch.Tensor,
        labels: torch.Tensor,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's log-probs of both sides of a micro-batch: precomputed, or computed now."""
        n = micro[f"{sides[0]}_ids"].shape[0]
        if self.stage_cfg.dpo.precompute_ref:
            split = "train" if self.training else "val"
            idx = micro["index"].clamp(min=0).cpu()
            ref = self.ref_logps[split][idx].to(self.device, dtype)
            return ref[:, 0], ref[:, 1]
        r = self._reference(ids, mask, labels).to(dtype)
        return r[:n], r[n:]

    def _pair_terms(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        n = micro["chosen_ids"].shape[0]
        ids = torch.cat([micro["chosen_ids"], micro["rejected_ids"]])
        mask = torch.cat([micro["chosen_mask"], micro["rejected_mask"]])
        labels = torch.cat([micro["chosen_labels"], micro["rejected_labels"]])
        pi = answer_logprobs(self.model, ids, mask, labels)
        cfg, p = self.stage_cfg.dpo, self.pref
        if p["loss"] == "simpo":  # reference-free
            lengths = answer_lengths(labels) if p["length_norm"] else torch.ones_like(answer_lengths(labels))
            return simpo_loss(pi[:n], pi[n:], lengths[:n], lengths[n:], p["beta"], p["gamma"], cfg.label_smoothing)
        ref_c, ref_r = self._ref_logps(micro, ("chosen", "rejected"), ids, mask, labels, pi.dtype)
        if p["length_norm"]:  # per-token log-ratios
            lengths = answer_lengths(labels).clamp(min=1).to(pi.dtype)
            pi, ref_c, ref_r = pi / lengths, ref_c / lengths[:n], ref_r / lengths[n:]
        if p["loss"] == "ipo":
            return ipo_loss(pi[:n], pi[n:], ref_c, ref_r, p["beta"])
        return dpo_loss(pi[:n], pi[n:], ref_c, ref_r, p["beta"], cfg.label_smoothing)

    def _kto_terms(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss [B], reward [B], reference point z0) of a micro-batch of KTO examples."""
        p, cfg = self.pref, self.stage_cfg.dpo
        n = micro["completion_ids"].shape[0]
        ids = torch.cat([micro["completion_ids"], micro["kl_ids"]])
        mask = torch.cat([micro["completion_mask"], micro["kl_mask"]])
        labels = torch.cat([micro["completion_labels"], micro["kl_labels"]])
        pi = answer_logprobs(self.model, ids[:n], mask[:n], labels[:n])
        with torch.no_grad():  # z0 takes no gradient: the mismatched pairs need no activations kept
            pi_kl = answer_logprobs(self.model, ids[n:], mask[n:], labels[n:])
        ref, ref_kl = self._ref_logps(micro, ("completion", "kl"), ids, mask, labels, pi.dtype)
        if p["length_norm"]:
            lengths = answer_lengths(labels).clamp(min=1).to(pi.dtype)
            pi, ref, pi_kl, ref_kl = pi / lengths[:n], ref / lengths[:n], pi_kl / lengths[n:], ref_kl / lengths[n:]
        # z0 = max(0, mean over the valid mismatched pairs of every rank of (pi - ref))
        valid = micro["valid"].to(pi.dtype)
        total = self._sum_over_ranks(torch.stack([((pi_kl.detach() - ref_kl) * valid).sum(), valid.sum()]))
        z0 = kto_reference_point(total[:1] / total[1].clamp(min=1), torch.zeros_like(total[:1]))
        loss, reward = kto_loss(pi, ref, micro["desirable"].bool(), z0, p["beta"], cfg.desirable_weight, cfg.undesirable_weight)
        return loss, reward, z0

    def micro_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pref["loss"] == "kto":
            loss, reward, z0 = self._kto_terms(micro)
            valid = micro["valid"].to(loss.dtype)
            up = micro["desirable"].to(loss.dtype) * valid
            down = (1 - micro["desirable"].to(loss.dtype)) * valid
            one = torch.ones((), dtype=loss.dtype, device=loss.device)
            stats = torch.stack([(reward * up).sum(), up.sum(), (reward * down).sum(), down.sum(), z0.sum(), one])
        else:
            loss, rc, rr = self._pair_terms(micro)
            valid = micro["valid"].to(loss.dtype)
            stats = torch.stack(
                [(pairwise_accuracy(rc, rr).to(loss.dtype) * valid).sum(), (rc * valid).sum(), (rr * valid).sum(), valid.sum()]
            )
        self._stats = stats if self._stats is None else self._stats + stats
        return (loss * valid).sum(), valid.sum()

    _stats: torch.Tensor | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._stats = None

    def _log_stats(self, prefix: str) -> None:
        if self._stats is None:
            return
        if self.pref["loss"] == "kto":
            self._log_kto_stats(prefix)
            return
        acc, rc, rr, n = self._sum_over_ranks(self._stats).tolist()
        if n:
            self.log(f"{prefix}/reward_accuracy", acc / n, prog_bar=prefix == "val")
            self.log(f"{prefix}/chosen_reward", rc / n)
            self.log(f"{prefix}/rejected_reward", rr / n)
            self.log(f"{prefix}/reward_margin", (rc - rr) / n)

    def _log_kto_stats(self, prefix: str) -> None:
        """Mean reward of the desirable and of the undesirable examples, their difference, and the
        reference point z0 (its mean over micro-batches; every rank has the same)."""
        ru, nu, rd, nd, z0, m = self._stats.tolist()
        ru, nu, rd, nd = self._sum_over_ranks(torch.tensor([ru, nu, rd, nd], device=self.device, dtype=torch.float64)).tolist()
        if nu:
            self.log(f"{prefix}/desirable_reward", ru / nu)
        if nd:
            self.log(f"{prefix}/undesirable_reward", rd / nd)
        if nu and nd:
            self.log(f"{prefix}/reward_margin", ru / nu - rd / nd, prog_bar=prefix == "val")
        if m:
            self.log(f"{prefix}/reference_point", z0 / m)

    def after_step(self) -> None:
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self._log_stats("train")
        super().after_step()

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._stats = None

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self._log_stats("val")
        self._stats = None

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ref_logps:
            checkpoint["dpo_ref_logps"] = {k: v.clone() for k, v in self.ref_logps.items()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if "dpo_ref_logps" in checkpoint:
            self.ref_logps = dict(checkpoint["dpo_ref_logps"])


STAGE = Stage(name="dpo", module=DPOStage, data=builders.preference_data, eval_suite="sft", needs_pretrained=True)
"""Stage 3, RL-free: direct preference optimisation (DPO, cDPO, IPO, SimPO, KTO)."""
