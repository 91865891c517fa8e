"""Direct preference optimisation (Rafailov et al. 2023): the RL-free alternative to PPO.

Per pair, with sequence log-probs of the answer's tokens under the policy and a frozen
reference: ``loss = -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r)))``. At step 0 the policy
is the reference and the loss is ln 2.

The reference is, in order of preference:

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
from llm.losses import dpo_loss, pairwise_accuracy, sequence_logprobs
from llm.model.lora import is_peft
from llm.stages.base import BaseStage
from llm.stages.registry import Stage

log = logging.getLogger(__name__)


def answer_logprobs(model: Any, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] summed log-probs of the labelled (answer) tokens; positions come from the mask."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), use_cache=False)
    return sequence_logprobs(out.logits, labels)


class DPOStage(BaseStage):
    unit = "pairs"

    def on_model_ready(self) -> None:
        cfg = self.stage_cfg.dpo
        self._ref: list[Any] = []  # a list: not a submodule, so not in checkpoints or the optimizer
        self.ref_logps: dict[str, torch.Tensor] = {}
        if cfg.precompute_ref or is_peft(self.model):
            return
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        self._ref.append(ref)

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
                for k, side in enumerate(("chosen", "rejected")):
                    table[lo : lo + len(b["index"]), k] = (
                        self._reference(b[f"{side}_ids"], b[f"{side}_mask"], b[f"{side}_labels"]).double().cpu()
                    )
            self.ref_logps[split] = table
            log.info("DPO: precomputed reference log-probs of %d %s pairs", n, split)

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

    def _pair_terms(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        n = micro["chosen_ids"].shape[0]
        ids = torch.cat([micro["chosen_ids"], micro["rejected_ids"]])
        mask = torch.cat([micro["chosen_mask"], micro["rejected_mask"]])
        labels = torch.cat([micro["chosen_labels"], micro["rejected_labels"]])
        pi = answer_logprobs(self.model, ids, mask, labels)
        if self.stage_cfg.dpo.precompute_ref:
            split = "train" if self.training else "val"
            idx = micro["index"].clamp(min=0).cpu()
            ref = self.ref_logps[split][idx].to(pi.device, pi.dtype)
            ref_c, ref_r = ref[:, 0], ref[:, 1]
        else:
            r = self._reference(ids, mask, labels)
            ref_c, ref_r = r[:n], r[n:]
        cfg = self.stage_cfg.dpo
        return dpo_loss(pi[:n], pi[n:], ref_c, ref_r, cfg.beta, cfg.label_smoothing)

    def micro_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        loss, rc, rr = self._pair_terms(micro)
        valid = micro["valid"].to(loss.dtype)
        stats = torch.stack([(pairwise_accuracy(rc, rr).to(loss.dtype) * valid).sum(), (rc * valid).sum(), (rr * valid).sum(), valid.sum()])
        self._stats = stats if self._stats is None else self._stats + stats
        return (loss * valid).sum(), valid.sum()

    _stats: torch.Tensor | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._stats = None

    def _log_stats(self, prefix: str) -> None:
        if self._stats is None:
            return
        acc, rc, rr, n = self._sum_over_ranks(self._stats).tolist()
        if n:
            self.log(f"{prefix}/reward_accuracy", acc / n, prog_bar=prefix == "val")
            self.log(f"{prefix}/chosen_reward", rc / n)
            self.log(f"{prefix}/rejected_reward", rr / n)
            self.log(f"{prefix}/reward_margin", (rc - rr) / n)

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
"""Stage 3, RL-free: direct preference optimisation against a frozen reference."""
