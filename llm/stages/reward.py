"""The reward model: a causal-LM backbone with a scalar head, trained on human rankings.

``r(prompt, answer)`` is the head's output at the last real token of the rendered conversation
(the answer's end-of-turn token). That position is found from the attention mask, so left and
right padding give the same score; a reward model that reads a padding position instead learns
next to nothing (near-chance accuracy), a classic bug. The model is transformers'
``AutoModelForSequenceClassification`` with one label, so the export loads as that class and
its own forward agrees with ours (the tokenizer's pad token is a dedicated token, never part of
a conversation: see ``llm.data.builders.load_chat_tokenizer``).

Loss per pair: ``-log sigmoid(r_chosen - r_rejected - margin)``, normalised by the number of
pairs over micro-batches and ranks (the base stage's rule). Held-out metrics: pairwise accuracy,
the mean and spread of rewards, and the mean chosen-minus-rejected gap.
"""

from __future__ import annotations

from typing import Any

import torch

from llm.data import builders
from llm.data.preference import positions_from_mask
from llm.losses import pairwise_accuracy, pairwise_reward_loss
from llm.stages.base import BaseStage
from llm.stages.registry import Stage


def backbone_and_head(model: Any) -> tuple[Any, Any]:
    """(the transformer without its head, the scalar head) of a ``*ForSequenceClassification``."""
    backbone = getattr(model, model.base_model_prefix)
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise ValueError(f"{type(model).__name__}: no score/classifier head")
    return backbone, head


def reward_scores(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B] rewards read at the last real token of each row (any padding side).

    The model's own forward runs (so hooks that sharding strategies put on the root module, such
    as FSDP's, run too); the head's output at every position is captured and read at the last
    real token."""
    _, head = backbone_and_head(model)
    out: dict[str, torch.Tensor] = {}
    hook = head.register_forward_hook(lambda m, i, o: out.__setitem__("scores", o))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions_from_mask(attention_mask), use_cache=False)
    finally:
        hook.remove()
    scores = out["scores"]  # [B, L, 1]
    idx = (attention_mask.long() * torch.arange(attention_mask.shape[1], device=attention_mask.device)).argmax(-1)
    return scores[torch.arange(scores.shape[0], device=scores.device), idx].squeeze(-1).float()


class RewardStage(BaseStage):
    unit = "pairs"
    head = "reward"

    def on_model_ready(self) -> None:
        # transformers' own forward pools at the last token that is not pad_token_id
        self.model.config.pad_token_id = self.tokenizer.pad_token_id

    def pair_rewards(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # chosen and rejected in one forward: [2B, L]
        ids = torch.cat([micro["chosen_ids"], micro["rejected_ids"]])
        mask = torch.cat([micro["chosen_mask"], micro["rejected_mask"]])
        r = reward_scores(self.model, ids, mask)
        n = micro["chosen_ids"].shape[0]
        return r[:n], r[n:]

    def count_tokens(self, micro: dict[str, torch.Tensor]) -> torch.Tensor:
        return micro["valid"].sum()

    def micro_loss(self, micro: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        rc, rr = self.pair_rewards(micro)
        valid = micro["valid"].to(rc.dtype)
        loss = (pairwise_reward_loss(rc, rr, micro["margin"].to(rc.dtype)) * valid).sum()
        if self.training:
            acc = (pairwise_accuracy(rc, rr) * valid).sum()
            self._train_stats += torch.stack([acc.detach(), valid.sum()])
        return loss, valid.sum()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._train_stats = torch.zeros(2, device=self.device)

    def after_step(self) -> None:
        s = self._sum_over_ranks(self._train_stats)
        if s[1] > 0 and self.global_step % max(1, self.trainer.log_every_n_steps) == 0:
            self.log("train/accuracy", s[0] / s[1])
        super().after_step()

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._val_chosen: list[torch.Tensor] = []
        self._val_rejected: list[torch.Tensor] = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        for micro in self.split_micro_batches(batch):
            rc, rr = self.pair_rewards(micro)
            keep = micro["valid"].bool()
            loss = pairwise_reward_loss(rc, rr, micro["margin"].to(rc.dtype))[keep]
            self._val_sum += loss.double().sum()
            self._val_n += keep.sum().double()
            self._val_chosen.append(rc[keep].detach())
            self._val_rejected.append(rr[keep].detach())

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self._val_chosen:
            return
        rc, rr = torch.cat(self._val_chosen).double(), torch.cat(self._val_rejected).double()
        both = torch.cat([rc, rr])
        # sums, so that ranks with different numbers of pairs combine exactly
        s = torch.stack([pairwise_accuracy(rc, rr).sum(), rc.new_tensor(rc.numel()), both.sum(), (both**2).sum(), (rc - rr).sum()])
        correct, n, s1, s2, gap = self._sum_over_ranks(s).tolist()
        if n == 0:
            return
        mean = s1 / (2 * n)
        var = max(0.0, s2 / (2 * n) - mean**2) * (2 * n) / max(1, 2 * n - 1)
        self.log("val/accuracy", correct / n, prog_bar=True)
        self.log("val/reward_mean", mean)
        self.log("val/reward_std", var**0.5)
        self.log("val/margin", gap / n)


STAGE = Stage(
    name="rm",
    module=RewardStage,
    data=builders.reward_data,
    needs_pretrained=True,
    lora_refused="stage=rm trains the whole reward model; LoRA is offered for sft, dpo and ppo (set stage.lora.enabled=false)",
    samples_during_training=False,
    samples_at_end=False,
)
"""Stage 3a: the reward model, from an SFT export."""
