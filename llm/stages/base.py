"""The base stage: model set-up, optimizer, schedule, the optimizer step, logging, RNG state.

A concrete stage implements ``micro_loss(micro_batch) -> (loss_sum, n_tokens)``; this class turns
it into one optimizer step per ``training_step``: the batch holds ``grad_accum`` micro-batches,
the number of real tokens over all of them and over all ranks is known before the first backward,
and every micro-batch's summed loss is divided by it. That makes the gradient exactly the
gradient of the mean token loss of the global batch, whatever the padding or masking
(torchtitan's rule), instead of a mean of per-micro-batch means.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from llm.config import ModelConfig, StageConfig
from llm.model.build import build_model, count_params, flops_per_token
from llm.perf import StepTimer
from llm.strategy import (
    clip_gradients,
    data_and_tensor_meshes,
    micro_batch_context,
    norm_after_step,
    parallelize,
    shard_module,
    tensor_parallel_size,
)

log = logging.getLogger(__name__)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (dim >= 2: linear and embedding weights) decay; norms and biases do not."""
    decay, no_decay, seen = [], [], set()
    for _, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        dims = len(p.ds_shape) if hasattr(p, "ds_shape") else p.dim()  # a ZeRO-3 partition is flat: its shape is [0]
        (decay if dims >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # no empty group (LoRA trains matrices only): DeepSpeed drops them, and the schedule would
    # then have one multiplier too many
    return [g for g in groups if g["params"]]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` steps, cosine to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg


class BaseStage(L.LightningModule):
    head = "causal_lm"
    """The model's head: ``causal_lm`` or ``reward`` (a scalar, for the reward model)."""
    unit = "tokens"
    """What ``micro_loss`` normalises by: ``tokens`` (LM stages) or ``pairs`` (reward model, DPO)."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        stage_cfg: StageConfig,
        vocab_size: int | None = None,
        special_tokens: dict | None = None,
        tokenizer: Any = None,
        compile: bool = False,
        peak_flops: float | None = None,
        new_token_ids: list[int] | None = None,
        activation_checkpointing: bool = False,
        seq_len: int | None = None,
        on_nonfinite: str = "stop",
        max_skipped_steps: int = 10,
        nan_at_step: int | None = None,
        sharded_init: bool = True,
        init_seed: int = 0,
    ) -> None:
        super().__init__()
        self.sharded_init, self.init_seed = sharded_init, init_seed
        """``strategy.sharded_init``: build on the meta device and fill each rank's shard
        (``llm.model.materialise``), the random initialisation seeded by ``init_seed`` (``seed``)."""
        if on_nonfinite not in ("stop", "skip"):
            raise ValueError(f"trainer.on_nonfinite={on_nonfinite}: choose stop or skip")
        self.seq_len = seq_len
        """Training sequence length (``data.seq_len``; ``None``: the model's maximum): for MFU."""
        self.on_nonfinite, self.max_skipped_steps, self.nan_at_step = on_nonfinite, max_skipped_steps, nan_at_step
        """A NaN/inf loss or gradient norm: ``stop``, or ``skip`` the update (at most
        ``max_skipped_steps`` times); ``nan_at_step`` injects one (fault tests)."""
        self.new_token_ids = list(new_token_ids or [])
        """Tokens added to the vocabulary (chat template): embeddings are resized for them."""
        self.automatic_optimization = False
        self.model_cfg = OmegaConf.structured(model_cfg) if not OmegaConf.is_config(model_cfg) else model_cfg
        self.stage_cfg = OmegaConf.structured(stage_cfg) if not OmegaConf.is_config(stage_cfg) else stage_cfg
        self.vocab_size = vocab_size
        self.special_tokens = special_tokens or {}
        self.tokenizer = tokenizer
        self.compile = compile
        self.activation_checkpointing = activation_checkpointing
        self.peak_flops = peak_flops
        self.model: torch.nn.Module | None = None
        # plain containers only: checkpoints load with weights_only=True
        self.save_hyperparameters(
            {
                "model": _plain(self.model_cfg),
                "stage": _plain(self.stage_cfg),
                "vocab_size": vocab_size,
                "new_token_ids": self.new_token_ids,
            }
        )
        self.timer = StepTimer()
        self.tokens_seen = 0
        self._flops_per_token: float | None = None
        self.samples: list[tuple[int, str, str]] = []

    # ------------------------------------------------------------------ model
    def configure_model(self) -> None:
        if self.model is not None:
            return
        lora = self.stage_cfg.get("lora") if OmegaConf.is_config(self.stage_cfg) else None
        lora_on = lora is not None and lora.enabled
        built: Any = "off (strategy.sharded_init=false)"
        if self.sharded_init and lora_on:
            built = "LoRA (PEFT builds its adapters from whole weights)"
        elif self.sharded_init:
            from llm.model.build import build_empty_model

            special = None if self.model_cfg.pretrained else self.special_tokens
            built = build_empty_model(self.model_cfg, self.vocab_size, special, head=self.head)
        empty = not isinstance(built, str)
        if empty:
            self.model, checkpoint = built
        else:
            if self.sharded_init:
                log.info("sharded start-up off: %s; every rank builds the whole model first", built)
            if self.model_cfg.pretrained:
                self.model = build_model(self.model_cfg, self.vocab_size, resize_embeddings=bool(self.new_token_ids), head=self.head)
            else:
                self.model = build_model(self.model_cfg, self.vocab_size, self.special_tokens)
        self.model.train()  # from_pretrained returns a model in eval mode (dropout off)
        n = count_params(self.model)
        log.info("model %s: %.2fM parameters", self.model_cfg.name, n / 1e6)
        if lora_on:
            from llm.model.lora import apply_lora

            self.model = apply_lora(self.model, lora, self.new_token_ids)
        try:
            self.on_model_ready()
            seq_len = self.seq_len or self.model_cfg.max_seq_len
            self._flops_per_token = flops_per_token(self.model.config, n, seq_len)  # before any sharding
            mesh, tp_mesh = data_and_tensor_meshes(getattr(self, "_device_mesh", None))
            if empty:
                template = copy.deepcopy(self.model)  # meta: no memory; one block of it is made whole at a time
                buffers = {k: b.detach().clone() for k, b in self.model.named_buffers()}
            self.model = parallelize(
                self.model, activation_checkpointing=self.activation_checkpointing, compile=self.compile, mesh=mesh, tp_mesh=tp_mesh
            )
            if mesh is not None:
                for extra in self.extra_trained_modules():
                    shard_module(extra, mesh)
            self.sharded = mesh is not None
            if empty:
                self._materialise(template, buffers, checkpoint, mesh)
        except BaseException:
            if empty:  # meta tensors: Lightning's teardown could not move them, hiding this error
                self.model = None
            raise

    def _materialise(self, template: torch.nn.Module, buffers: dict, checkpoint: Any, mesh: Any) -> None:
        """Fill the empty (meta) model, each rank its shard, then its frozen copies."""
        from llm.model.materialise import CheckpointSlices, Zero3Partition, copy_into, materialise

        zero3 = None
        config = self.zero3_config if self.zero3_config is not None else self._strategy_zero3_config()
        if config is not None:
            from llm.strategy import fill_auto_buckets

            fill_auto_buckets(config, self.model)
            zero3 = Zero3Partition(config)
        if mesh is None:
            device = torch.get_default_device()  # the strategy's (Lightning's tensor_init_context): as a whole build
        elif mesh.device_type == "cuda":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device(mesh.device_type)
        reader = CheckpointSlices(checkpoint) if checkpoint is not None else None
        try:
            counts = materialise(self.model, template, device, self.init_seed, buffers, reader, zero3)
        finally:
            if reader is not None:
                reader.close()
        self.start_bytes_read = reader.bytes_read if reader is not None else 0
        log.info(
            "sharded start-up%s: %d tensors read from %s (%.1f MiB on this rank), %d initialised (seed %d)",
            " (ZeRO-3 partitions)" if zero3 is not None else "",
            counts["loaded"],
            checkpoint or "no checkpoint",
            (reader.bytes_read if reader is not None else 0) / 2**20,
            counts["initialised"],
            self.init_seed,
        )
        for ref in self.frozen_copies():
            if mesh is not None:
                shard_module(ref, mesh)
            copy_into(self.model, ref, device, buffers)

    start_bytes_read: int = 0
    """Bytes of checkpoint tensors this rank read in the sharded start (only its slices)."""

    zero3_config: dict | None = None
    """The DeepSpeed config under which the sharded start makes ZeRO-3 partitions directly; ``None``:
    the trainer's strategy's when it is ZeRO-3 (the start-up benchmark sets it, having no trainer)."""

    def _strategy_zero3_config(self) -> dict | None:
        from llm.strategy import is_zero3

        strategy = self._trainer.strategy if self._trainer is not None else None
        return strategy.config if strategy is not None and is_zero3(strategy) else None

    def frozen_copies(self) -> list[torch.nn.Module]:
        """Frozen copies of the model made in ``on_model_ready`` (DPO's and PPO's reference): under
        sharded start-up they are built empty with it, then sharded like it and given its values."""
        return []

    sharded: bool = False
    """FSDP: the model (and ``extra_trained_modules``) hold one shard of their weights per rank."""

    def extra_trained_modules(self) -> list[torch.nn.Module]:
        """Trained modules beside ``self.model`` (PPO's value head or critic): sharded like it."""
        return []

    def on_model_ready(self) -> None:
        """Hook: the model is built (and wrapped for LoRA); stages add what they need."""

    def optim_modules(self) -> torch.nn.Module:
        """What the optimizer trains (PPO adds its value head or critic)."""
        return self.model

    def forward(self, input_ids: torch.Tensor, **kw: Any) -> Any:
        return self.model(input_ids=input_ids, **kw)

    # ------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        o = self.stage_cfg.optim
        fused = o.fused if o.fused is not None else self.device.type in ("cuda", "cpu")
        opt = torch.optim.AdamW(param_groups(self.optim_modules(), o.weight_decay), lr=o.lr, betas=tuple(o.betas), eps=o.eps, fused=fused)
        total = self.trainer.max_steps if self.trainer.max_steps and self.trainer.max_steps > 0 else self._estimated_total_steps()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _estimated_total_steps(self) -> int:
        steps = self.trainer.estimated_stepping_batches
        return int(steps) if math.isfinite(steps) else 10**9

    # -------------------------------------------------------------- the step
    def micro_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(sum of token losses, number of real tokens) of one micro-batch."""
        raise NotImplementedError

    def split_micro_batches(self, batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """A step batch has a leading grad_accum axis: [A, micro_batch, ...]."""
        n = next(iter(batch.values())).shape[0]
        return [{k: v[i] for k, v in batch.items()} for i in range(n)]

    def count_tokens(self, micro: dict[str, torch.Tensor]) -> torch.Tensor:
        return (micro["labels"] != -100).sum()

    def _no_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Around one micro-batch's backward: DDP all-reduces only on the last micro-batch of a
        step, DeepSpeed learns where its accumulation boundary is (``llm.strategy``)."""
        if self._trainer is None:
            return contextlib.nullcontext()
        return micro_batch_context(self.trainer.strategy, last)

    def _sum_over_ranks(self, x: torch.Tensor) -> torch.Tensor:
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(x.clone(), reduce_op="sum")
        return x

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        sched = self.lr_schedulers()
        micros = self.split_micro_batches(batch)
        n_local = torch.stack([self.count_tokens(m) for m in micros]).sum()
        n_global = self._sum_over_ranks(n_local.float())
        if n_global.item() == 0:
            raise RuntimeError(f"step {self.global_step}: the batch has no token that carries loss")
        # DDP averages gradients over ranks: scale by world_size so the result is sum / n_global.
        # Under fsdp_tp the tp ranks of a data-parallel group count the same tokens, so n_global
        # is tp times their sum and FSDP averages over dp = world / tp ranks: the same scale holds
        scale = self.trainer.world_size / n_global
        loss_sum = torch.zeros((), device=self.device)
        inject = self.nan_at_step is not None and self.global_step == self.nan_at_step and not self._nan_injected
        for i, micro in enumerate(micros):
            with self._no_sync(last=i == len(micros) - 1):
                nll, _ = self.micro_loss(micro)
                if inject:  # fault injection (trainer.nan_at_step)
                    nll = nll * float("nan")
                    self._nan_injected = True
                self.manual_backward(nll * scale)
            loss_sum += nll.detach()
        grad_norm = self._clip_gradients(opt)
        lr = sched.get_last_lr()[0]  # the rate this step uses
        loss = self._sum_over_ranks(loss_sum) / n_global  # the same on every rank: all ranks decide alike
        if not torch.isfinite(loss) or (grad_norm is not None and not torch.isfinite(grad_norm)):
            return self._nonfinite(opt, loss, grad_norm, batch_idx)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        if grad_norm is None:  # DeepSpeed clips inside its step and reports the norm after it
            grad_norm = norm_after_step(self.trainer.strategy)
            if grad_norm is not None and not torch.isfinite(grad_norm):
                raise FloatingPointError(
                    f"non-finite gradient norm {grad_norm.item()} at optimizer step {self.global_step} (batch {batch_idx}, rank "
                    f"{self.global_rank}): under DeepSpeed the norm is known only after its step, so this update was applied; "
                    "resume from the last checkpoint (ckpt_path=last), perhaps with a lower stage.optim.lr"
                )

        tokens = int(n_global.item()) // tensor_parallel_size(self.trainer.strategy)  # a TP group's ranks share one batch
        self.tokens_seen += tokens
        self.timer.tick(tokens)
        last = self.trainer.max_steps > 0 and self.global_step >= self.trainer.max_steps
        # Lightning's self.log costs ~1.3 ms a call on CPU: log only on the steps the loggers write
        if self.global_step % max(1, self.trainer.log_every_n_steps) == 0 or last:
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/lr", lr)
            if grad_norm is not None:
                self.log("train/grad_norm", grad_norm)
            self.log(f"train/{self.unit}_seen", float(self.tokens_seen))
            rate = self.timer.pop()
            if rate is not None:
                tps, sps = rate
                self.log(f"train/{self.unit}_per_s", tps, prog_bar=True)
                self.log("train/s_per_step", sps)
                mfu = self.mfu(tps) if self.unit == "tokens" else None
                if mfu is not None:
                    self.log("train/mfu", mfu)
        self.after_step()
        return loss

    skipped_steps: int = 0
    _nan_injected: bool = False

    def _nonfinite(self, opt: Any, loss: torch.Tensor, grad_norm: torch.Tensor | None, batch_idx: int) -> None:
        """A NaN/inf loss or gradient norm, before the update: stop, or skip this update."""
        where = (
            f"optimizer step {self.global_step + 1} (epoch {self.current_epoch}, batch {batch_idx} of the epoch, "
            f"rank {self.global_rank} of {self.trainer.world_size})"
        )
        what = f"loss {loss.item()}, gradient norm {grad_norm.item() if grad_norm is not None else 'n/a'}"
        opt.zero_grad(set_to_none=True)
        if self.on_nonfinite == "skip" and self.skipped_steps < self.max_skipped_steps:
            self.skipped_steps += 1
            log.warning(
                "non-finite %s at %s: update skipped (%d of at most %d; trainer.max_skipped_steps)",
                what,
                where,
                self.skipped_steps,
                self.max_skipped_steps,
            )
            for lg in self.trainer.loggers:
                lg.log_metrics({"train/skipped_steps": float(self.skipped_steps)}, step=self.global_step)
            self.after_step()  # the batch is consumed: a resumed run does not see it again
            return None
        why = (
            f"{self.skipped_steps} updates were skipped already (trainer.max_skipped_steps={self.max_skipped_steps})"
            if self.on_nonfinite == "skip"
            else "trainer.on_nonfinite=stop"
        )
        raise FloatingPointError(
            f"non-finite {what} at {where}; stopped before the update ({why}). The weights were not changed and "
            f"the last checkpoint is intact: resume with ckpt_path=last, perhaps with a lower stage.optim.lr or "
            f"trainer.on_nonfinite=skip"
        )

    def _clip_gradients(self, opt: Any) -> torch.Tensor | None:
        max_norm = self.stage_cfg.optim.grad_clip
        params = [p for p in self.optim_modules().parameters() if p.requires_grad]
        return clip_gradients(self.trainer.strategy, params, max_norm)

    def after_step(self) -> None:
        """Hook for stages and callbacks (sampling, data position)."""
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "on_train_step_done"):
            dm.on_train_step_done()

    # ------------------------------------------------------------ validation
    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_n = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        for micro in self.split_micro_batches(batch):
            nll, n = self.micro_loss(micro)
            self._val_sum += nll.double()
            self._val_n += n.double()

    def on_validation_epoch_end(self) -> None:
        s, n = self._sum_over_ranks(self._val_sum), self._sum_over_ranks(self._val_n)
        if n.item() == 0:
            return
        loss = (s / n).float()
        self.log("val/loss", loss, prog_bar=True)
        if self.unit == "tokens":
            self.log("val/ppl", torch.exp(loss))

    # ------------------------------------------------------------- MFU
    def mfu(self, tokens_per_s: float) -> float | None:
        if not self.peak_flops:
            return None
        if self._flops_per_token is None:
            return None
        return self._flops_per_token * tokens_per_s / (self.peak_flops * self.trainer.world_size)

    # ------------------------------------------------------------- RNG state
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        np_state = np.random.get_state()
        checkpoint["rng"] = {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
        }
        checkpoint["tokens_seen"] = self.tokens_seen

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.tokens_seen = int(checkpoint.get("tokens_seen", 0))
        self._rng_to_restore = checkpoint.get("rng")

    def on_train_start(self) -> None:
        # restored here, after Lightning's own set-up has drawn from the generators
        rng = getattr(self, "_rng_to_restore", None)
        if rng:
            torch.set_rng_state(rng["torch"])
            if torch.cuda.is_available() and rng["cuda"]:
                torch.cuda.set_rng_state_all(rng["cuda"])
            kind, keys, *rest = rng["numpy"]
            np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
            random.setstate(_to_tuple(rng["python"]))
            self._rng_to_restore = None


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
