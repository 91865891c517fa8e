"""Next-token prediction: stage 1 (pretraining on packed text); SFT reuses it with masked labels."""

from __future__ import annotations

import torch

from llm.data import builders
from llm.losses import token_nll_sum
from llm.stages.base import BaseStage
from llm.stages.registry import Stage


class LMStage(BaseStage):
    """Causal LM loss on ``labels`` aligned with ``input_ids`` (labels[t] follows input_ids[t];
    -100 marks tokens that carry no loss)."""

    def micro_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        kwargs = {}
        if "attention_mask" in batch:
            kwargs["attention_mask"] = batch["attention_mask"]
        if "position_ids" in batch:
            kwargs["position_ids"] = batch["position_ids"]
        out = self.model(input_ids=batch["input_ids"], use_cache=False, **kwargs)
        return token_nll_sum(out.logits, batch["labels"])


PRETRAIN = Stage(
    name="pretrain",
    module=LMStage,
    data=builders.pretrain_data,
    eval_suite="pretrain",
    chat=False,
    val_before_train=False,
    tensor_parallel=True,
)
"""Stage 1: next-token prediction on packed text, from random weights (or a checkpoint)."""

SFT = Stage(name="sft", module=LMStage, data=builders.sft_data, eval_suite="sft", tensor_parallel=True)
"""Stage 2: instruction fine-tuning; loss on the assistant's tokens only (labels are -100 elsewhere)."""
