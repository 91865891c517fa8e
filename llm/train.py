"""The one entry point for every stage: ``python -m llm.train stage=pretrain model=tiny data=demo``.

The only module that sees the whole config; it hands every component its own typed piece. It
reads the stage's declaration (``llm.stages.registry``) and branches on no stage name:
compose -> stage -> data -> module -> Lightning's fit -> checkpoint -> export -> evaluation.
The last line it prints is ``export: <absolute path of the Hugging Face export>``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig

from llm.config import Config, check_config, register_configs
from llm.data.builders import StageData
from llm.stages.registry import Stage, get_stage

log = logging.getLogger("llm.train")
register_configs()


def build_module(cfg: Config, stage: Stage, data: StageData, peak_flops: Any = None, for_training: bool = True) -> Any:
    """The stage's LightningModule (its model is built later, in ``configure_model``).
    ``for_training=False``: a plain copy for the consolidated export (no compile, no checkpointing)."""
    tok = data.tokenizer
    return stage.module(
        cfg.model,
        cfg.stage,
        vocab_size=len(tok),
        special_tokens={"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        tokenizer=tok,
        compile=cfg.trainer.compile and for_training,
        peak_flops=peak_flops,
        new_token_ids=data.new_token_ids,
        activation_checkpointing=cfg.strategy.activation_checkpointing and for_training,
        seq_len=cfg.data.seq_len,
        on_nonfinite=cfg.trainer.on_nonfinite,
        max_skipped_steps=cfg.trainer.max_skipped_steps,
        nan_at_step=cfg.trainer.nan_at_step,
        sharded_init=cfg.strategy.sharded_init,
        init_seed=cfg.seed,
    )


def train(cfg: Config | DictConfig) -> dict[str, Any]:
    """Run one stage from a composed config. Returns {"export": path | None, "metrics": {...}, ...}."""
    from llm.loggers import quiet_lightning
    from llm.preflight import require_world
    from llm.rundir import RunLock, find_checkpoint, is_first_process, prepare_run_dir, resolve_run_dir

    check_config(cfg)
    # a missing GPU or a world other than the one asked for fails here, before any data or model
    require_world(cfg.strategy.accelerator, cfg.strategy.devices, cfg.strategy.num_nodes)
    stage = get_stage(cfg.stage.name)
    stage.validate(cfg)
    quiet_lightning()
    if cfg.eval.name == "auto":
        from llm.eval.suites import load_suite

        cfg.eval = load_suite(stage.eval_suite)
    run_dir = resolve_run_dir(cfg)
    first = is_first_process()
    with RunLock(run_dir) if first else contextlib.nullcontext():  # one run per directory
        ckpt = find_checkpoint(cfg.ckpt_path, run_dir, cfg.weights_only)
        if first:
            prepare_run_dir(cfg, run_dir, ckpt)
        return _fit(cfg, stage, run_dir, ckpt)


def _fit(cfg: Config, stage: Stage, run_dir: Path, ckpt: str | None) -> dict[str, Any]:
    from llm.callbacks import build_callbacks
    from llm.data.overfit import OverfitDataModule
    from llm.loggers import build_loggers
    from llm.perf import peak_flops
    from llm.preflight import Preflight
    from llm.strategy import build_placement, check_switches

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    tc = cfg.trainer
    placement = build_placement(cfg.strategy, tc, grad_clip=cfg.stage.optim.grad_clip, micro_batch_size=cfg.data.micro_batch_size)
    check_switches(placement, cfg.strategy, tc, cfg.eval)

    data = stage.data(cfg)
    peak = tc.peak_flops
    if peak is None:
        peak = peak_flops(torch.device("cuda") if placement.accelerator == "gpu" else torch.device("cpu"), placement.precision)
    module = build_module(cfg, stage, data, peak)
    overfit = tc.overfit_batches > 0
    dm = OverfitDataModule(data.datamodule) if overfit else data.datamodule

    callbacks, ckpt_cb, preempt = build_callbacks(cfg, stage, placement, run_dir)
    callbacks.insert(0, Preflight(run_dir))  # the report, once the process group exists
    trainer = L.Trainer(
        accelerator=placement.accelerator,
        devices=placement.devices,
        num_nodes=placement.num_nodes,
        strategy=placement.strategy,
        precision=placement.precision,
        max_steps=tc.max_steps,
        max_epochs=tc.max_epochs,
        val_check_interval=tc.val_every_n_steps,
        check_val_every_n_epoch=None,
        limit_val_batches=0 if overfit else None,
        log_every_n_steps=tc.log_every_n_steps,
        logger=build_loggers(cfg, run_dir),
        callbacks=callbacks,
        enable_checkpointing=ckpt_cb is not None,
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        default_root_dir=str(run_dir),
        reload_dataloaders_every_n_epochs=1,
        use_distributed_sampler=False,
        num_sanity_val_steps=tc.num_sanity_val_steps,
        fast_dev_run=tc.fast_dev_run or False,
        deterministic=tc.deterministic,
        plugins=placement.plugins,
    )
    if trainer.is_global_zero:
        if data.announce is not None:
            data.announce(run_dir)
        if ckpt:
            log.info("resuming from %s", ckpt)
    val_before = tc.val_before_train if tc.val_before_train is not None else stage.val_before_train
    before: dict[str, float] = {}
    if val_before and not ckpt and not overfit and not tc.fast_dev_run and _has_val(dm):
        before = {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False, weights_only=cfg.weights_only)[0].items()}
        if before and trainer.is_global_zero:
            log.info("before training: %s", ", ".join(f"{k}={v:.4f}" for k, v in before.items()))
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=cfg.weights_only)

    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()},
        "global_step": trainer.global_step,
        "before": before,
        "export": None,
        "samples": [],
        "module": module,
    }
    after = {k: v for k, v in result["metrics"].items() if k.startswith("val/")}
    if before and after and trainer.is_global_zero:
        log.info("after training: %s", ", ".join(f"{k}={before[k]:.4f} -> {after[k]:.4f}" for k in before if k in after))
    if preempt is not None and preempt.preempted_at is not None:
        result["preempted_at"] = preempt.preempted_at
        if trainer.is_global_zero:
            log.warning(
                "stopped for preemption at step %d; the checkpoint is in %s (no export: the run is not finished)",
                preempt.preempted_at,
                run_dir / "checkpoints",
            )
        return result
    if ckpt_cb is not None and trainer.global_step > 0:
        final = Path(ckpt_cb.dirpath) / f"step{trainer.global_step:07d}.ckpt"
        if not trainer.strategy.broadcast(final.exists()):
            trainer.save_checkpoint(final, weights_only=False)
            ckpt_cb.prune(trainer)  # trainer.ckpt_keep holds for the final one too
    finish(cfg, stage, data, trainer, module, placement, result)
    return result


def finish(cfg: Config, stage: Stage, data: StageData, trainer: Any, module: Any, placement: Any, result: dict) -> None:
    """After training: greedy samples, the Hugging Face export (LoRA merged, its adapter saved
    beside it) and the evaluation suite, on rank 0; ``result`` gets what they produce.

    ZeRO-3 and FSDP: the export is streamed (:func:`llm.export.export_hf_streamed`: every rank
    takes part, a layer gathered at a time, rank 0 writing shard files), so no process holds the
    whole model for it; rank 0 then loads the export into one plain model only when samples or
    the evaluation suite need one. A LoRA run (its merge needs the whole model) and a run
    without an export consolidate the shards into one plain model on rank 0 as before."""
    from llm.export import export_hf, export_hf_streamed, load_weights
    from llm.model.engine import generate_text
    from llm.strategy import consolidated_state_dict

    tc, tokenizer = cfg.trainer, data.tokenizer
    run_dir = Path(result["run_dir"])
    exporting = cfg.export and not tc.fast_dev_run
    prompts = list(cfg.stage.sample_prompts) if stage.samples_at_end else []
    evaluating = bool(cfg.eval.tasks and cfg.eval.at_end and not tc.fast_dev_run)
    streamed = placement.param_sharded and exporting and not cfg.stage.lora.enabled
    extra = {
        "stage": stage.name,
        "model": cfg.model.name,
        "base": cfg.model.pretrained,
        "global_step": trainer.global_step,
        "tokens_seen": module.tokens_seen,
        "metrics": result["metrics"],
    }
    stop = None
    if stage.chat:
        from llm.data.chat import stop_token_ids

        stop = stop_token_ids(tokenizer)
    if streamed:
        config = module.model.config
        if cfg.strategy.activation_checkpointing and hasattr(config, "use_cache"):
            # training switched the cache off (``parallelize``); the export's config is a plain model's
            config = copy.deepcopy(config)
            config.use_cache = type(config)().use_cache
        path = export_hf_streamed(
            trainer.strategy,
            module.model,
            tokenizer,
            run_dir / "export",
            extra=extra,
            eos_token_id=stop,
            max_shard_size=cfg.export_max_shard_size,
            config=config,
        )
        result["export"] = str(path) if path is not None else None
    full = consolidated_state_dict(trainer.strategy, module) if placement.param_sharded and not streamed else None
    if trainer.is_global_zero:
        if full is not None or (streamed and (prompts or evaluating)):
            plain = build_module(cfg, stage, data, for_training=False)
            plain.configure_model()
            if full is not None:
                plain.load_state_dict(full)
                log.info("consolidated the %s shards into one model for export", cfg.strategy.name)
            else:
                load_weights(plain.model, result["export"])
                log.info("loaded the export into one model for the samples and the evaluation")
            module = plain
            result["module"] = plain
        model = module.model
        if prompts:
            texts = generate_text(model, tokenizer, prompts, cfg.stage.sample_max_new_tokens, chat=stage.chat)
            result["samples"] = list(zip(prompts, texts))
            print("\nsamples (greedy):")
            for p, t in result["samples"]:
                print(f"  {p!r} -> {t!r}")
        if exporting and not streamed:
            if cfg.stage.lora.enabled:
                from llm.model.lora import save_adapter

                adapter = save_adapter(model, tokenizer, run_dir / "adapters" / cfg.stage.lora.name, cfg.stage.lora.name)
                result["adapter"] = str(adapter)
                print(f"adapter: {adapter}", flush=True)
                model = model.merge_and_unload()  # training is over: the export is base + adapter, plain HF
                module.model = model
                extra["lora"] = {"name": cfg.stage.lora.name, "adapter": str(adapter)}
            result["export"] = str(
                export_hf(model, tokenizer, run_dir / "export", extra=extra, eos_token_id=stop, max_shard_size=cfg.export_max_shard_size)
            )
        if evaluating:
            from llm.eval.suites import eval_at_end

            result["eval"] = eval_at_end(cfg.eval, stage.name, model, tokenizer, trainer, Path(result["export"] or run_dir))
    for lg in trainer.loggers:  # end the W&B run: a later train() in this process starts its own
        if type(lg).__name__ == "WandbLogger" and trainer.is_global_zero and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()


def _has_val(dm: Any) -> bool:
    has = getattr(dm, "has_split", None)
    return bool(has("val")) if has is not None else True


# an absolute path: Hydra resolves a relative one against the calling module, which under a console
# script (``xiulian train``, ``xiulian-train``) is no file, and then looks for a Python package "conf"
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    result = train(cfg)
    if result["export"]:
        print(f"export: {result['export']}", flush=True)
    _leave_if_not_first_rank()


def _leave_if_not_first_rank() -> None:
    """A rank other than 0 of a distributed run has nothing left to do once ``train`` returns
    (rank 0 alone exports and evaluates): it flushes its logs and leaves with ``os._exit(0)``.
    Its interpreter's normal shutdown ran C++ destructors of DeepSpeed ZeRO-3's objects while
    rank 0 was still exporting, and now and then one aborted the process ("terminate called
    without an active exception", SIGABRT: torchrun then failed the job although every step,
    checkpoint and the export were done)."""
    import os
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
