"""The stage registry: every training stage declared once, in its own file.

``llm.train.train`` reads a :class:`Stage` and branches on none of their names. Adding a stage
(KTO, ...) is one new file under ``llm/stages/`` that ends in a ``STAGE = Stage(...)``
declaration, plus one line in :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm.config import Config
    from llm.data.builders import StageData

#: stage name (``stage.name`` in conf/stage/*.yaml) -> ``module:attribute`` of its declaration,
#: imported when the stage is used
REGISTRY: dict[str, str] = {
    "pretrain": "llm.stages.lm:PRETRAIN",
    "sft": "llm.stages.lm:SFT",
    "rm": "llm.stages.reward:STAGE",
    "dpo": "llm.stages.dpo:STAGE",
    "ppo": "llm.stages.ppo:STAGE",
    "grpo": "llm.stages.grpo:STAGE",
}


@dataclass(frozen=True)
class Stage:
    """What the one training loop needs to know about a stage."""

    name: str
    """The stage's name: ``stage=<name>`` on the command line."""
    module: type
    """Its LightningModule (a ``BaseStage``): how a batch becomes a loss."""
    data: Callable[[Config], StageData]
    """Builds the tokenizer and the data module from the config (``llm.data.builders``)."""
    eval_suite: str = "none"
    """The evaluation suite (``conf/eval/<name>.yaml``) that ``eval=auto`` runs."""
    chat: bool = True
    """Conversations: samples are rendered with the chat template, and the export's
    ``generation_config`` stops at the end of an assistant turn."""
    needs_pretrained: bool = False
    """Starts from a fine-tuned model: ``model.pretrained`` is required even with
    ``stage.random_init=true``."""
    lora_refused: str | None = None
    """Why ``stage.lora.enabled=true`` is refused (``None``: LoRA is offered)."""
    samples_during_training: bool = True
    """``stage.sample_every_n_steps`` greedy samples while training (PPO logs its own rollouts)."""
    samples_at_end: bool = True
    """Greedy samples of ``stage.sample_prompts`` from the final model (not for a reward model)."""
    val_before_train: bool = True
    """Default of ``trainer.val_before_train``: validate the starting model first."""
    refused_strategies: Mapping[str, str] = field(default_factory=dict)
    """Strategy name -> why this stage does not run under it."""
    tensor_parallel: bool = False
    """Runs under ``strategy=fsdp_tp``: a causal LM trained whole, whose loss reads the logits
    only (the tensor-parallel plan splits transformers' causal LMs; reward heads, reference
    copies, generation during training and LoRA adapters are not covered)."""
    check: Callable[[Config], None] | None = None
    """Further start-up checks of the stage's own settings; raises ``ValueError``."""

    def validate(self, cfg: Config) -> None:
        """Refuse, at start and with the reason, what this stage cannot do with ``cfg``."""
        if not cfg.model.pretrained and not cfg.stage.random_init:
            raise ValueError(
                f"stage={self.name} starts from a pretrained model: set model=hf model.pretrained=<a stage-1 export, "
                "a Hugging Face model directory or a .gguf file>, or stage.random_init=true to train from random weights"
            )
        if cfg.stage.lora.enabled and not cfg.model.pretrained:
            raise ValueError("stage.lora.enabled: LoRA adapts a pretrained model; set model.pretrained")
        if cfg.stage.lora.enabled and self.lora_refused:
            raise ValueError(self.lora_refused)
        if self.needs_pretrained and not cfg.model.pretrained:
            raise ValueError(f"stage={self.name} starts from a fine-tuned model: set model.pretrained=<an SFT export or HF directory>")
        if cfg.strategy.name == "fsdp_tp" and not self.tensor_parallel:
            raise ValueError(
                f"stage={self.name} does not run under strategy=fsdp_tp: tensor parallelism here covers causal LMs trained "
                "whole (stage=pretrain, stage=sft); use strategy=fsdp"
            )
        if cfg.strategy.name == "fsdp_tp" and cfg.stage.lora.enabled:
            raise ValueError(
                "stage.lora.enabled under strategy=fsdp_tp: PEFT's LoRA layers wrap the projections the tensor-parallel plan "
                "splits; use strategy=fsdp for LoRA"
            )
        why = self.refused_strategies.get(cfg.strategy.name)
        if why:
            raise ValueError(f"stage={self.name} does not run under strategy={cfg.strategy.name}: {why}")
        if self.check is not None:
            self.check(cfg)


def get_stage(name: str) -> Stage:
    """The declaration of stage ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"stage={name}: unknown (choose one of {', '.join(REGISTRY)})")
    module, _, attr = REGISTRY[name].partition(":")
    stage: Any = getattr(importlib.import_module(module), attr)
    if not isinstance(stage, Stage) or stage.name != name:
        raise TypeError(f"{REGISTRY[name]} is not the declaration of stage {name!r}")
    return stage
