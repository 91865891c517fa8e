"""The one entry point for every stage: ``python -m llm.train stage=pretrain model=tiny data=demo``.

The only module that sees the whole config; it hands every component its own typed piece.
The last line it prints is ``export: <absolute path of the Hugging Face export>``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from llm.config import Config, DataConfig, register_configs

log = logging.getLogger("llm.train")
register_configs()

CKPT_RE = re.compile(r"step(\d+)\.ckpt$")


def _stage_class(module: str, name: str) -> Any:
    def load() -> Any:
        import importlib

        return getattr(importlib.import_module(module), name)

    return load


#: stage name -> its LightningModule (imported when used)
STAGES = {
    "pretrain": _stage_class("llm.stages.lm", "LMStage"),
    "sft": _stage_class("llm.stages.lm", "LMStage"),
    "rm": _stage_class("llm.stages.reward", "RewardStage"),
    "dpo": _stage_class("llm.stages.dpo", "DPOStage"),
    "ppo": _stage_class("llm.stages.ppo", "PPOStage"),
}


#: the evaluation suite (conf/eval) a stage runs with ``eval=auto`` (the default)
STAGE_SUITES = {"pretrain": "pretrain", "sft": "sft", "dpo": "sft", "ppo": "sft", "rm": "none"}


# ---------------------------------------------------------------------------- data
def data_cache_dir(cfg: DataConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    root = Path(os.environ.get("XIULIAN_CACHE", Path.home() / ".cache" / "xiulian"))
    key = json.dumps(
        [list(cfg.sources), cfg.tokenizer, cfg.vocab_size, cfg.shard_max_tokens, cfg.val_fraction, cfg.seed],
        sort_keys=True,
    )
    return root / "data" / f"{cfg.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def resolve_data(cfg: DataConfig) -> tuple[Any, Path]:
    """(tokenizer, shards directory): prepared from ``sources`` (cached) or given as ``shards``."""
    from llm.data.prepare import prepare_data
    from llm.data.tokenizer import load_tokenizer

    if cfg.shards:
        shards = Path(cfg.shards)
        manifest = shards / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"data.shards={shards}: no manifest.json (write shards with `python -m llm.data.prepare`)")
        tok_dir = cfg.tokenizer or json.loads(manifest.read_text()).get("tokenizer")
        if not tok_dir:
            raise ValueError(f"{manifest}: names no tokenizer; set data.tokenizer=<dir>")
        return load_tokenizer(tok_dir), shards
    if not cfg.sources:
        raise ValueError("data: set data.sources (text files, directories, builtin:python-docs) or data.shards")
    out = prepare_data(
        list(cfg.sources),
        data_cache_dir(cfg),
        cfg.vocab_size,
        tokenizer=cfg.tokenizer,
        shard_max_tokens=cfg.shard_max_tokens,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )
    return load_tokenizer(out / "tokenizer"), out / "shards"


def chat_specs(cfg: DataConfig) -> tuple[list, list]:
    """(train specs, val specs) of the SFT mixture: ``datasets`` plus the short form ``sources``."""
    from llm.data.chat import DatasetSpec

    def spec(d: Any) -> DatasetSpec:
        d = OmegaConf.to_container(d, resolve=True) if OmegaConf.is_config(d) else dict(d)
        return DatasetSpec(**d)

    train = [spec(d) for d in cfg.datasets] + [DatasetSpec(path=str(p)) for p in cfg.sources]
    val = [spec(d) for d in cfg.val_datasets]
    if not train:
        raise ValueError("stage=sft: no conversations; set data.sources=[file.jsonl] or data.datasets=[{path: ..., weight: ...}]")
    return train, val


def load_sft_tokenizer(cfg: Config, dedicated_pad: bool = False) -> tuple[Any, list[int]]:
    """The tokenizer of the checkpoint being fine-tuned, with a chat template (its own, or the
    framework default with its tokens added). Returns (tokenizer, ids of added tokens).

    ``dedicated_pad`` (the reward model): when the pad token is missing or is also a token of
    conversations (eos, end-of-turn: SmolLM2 pads with ``<|im_end|>``), a ``<|pad|>`` token is
    added, so that transformers' sequence-classification forward, which reads the score at the
    last non-pad token, agrees with the training read-out on the exported model."""
    from transformers import AutoTokenizer

    from llm.data.chat import ensure_chat_template
    from llm.data.tokenizer import load_tokenizer
    from llm.model.build import resolve_pretrained

    if cfg.data.tokenizer:
        tok = load_tokenizer(cfg.data.tokenizer)
    elif cfg.model.pretrained:
        tok = AutoTokenizer.from_pretrained(str(resolve_pretrained(cfg.model.pretrained)), trust_remote_code=cfg.model.trust_remote_code)
    else:
        raise ValueError("stage=sft with random_init needs a tokenizer: set data.tokenizer=<dir>")
    if cfg.data.chat_template not in ("auto", "default"):
        raise ValueError(f"data.chat_template must be auto or default, got {cfg.data.chat_template!r}")
    if cfg.data.chat_template == "default":
        tok.chat_template = None
    added = ensure_chat_template(tok)
    if dedicated_pad:
        from llm.data.chat import stop_token_ids

        if tok.pad_token_id is None or tok.pad_token_id in stop_token_ids(tok) or tok.pad_token_id == tok.bos_token_id:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            added = [*added, "<|pad|>"]
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, tok.convert_tokens_to_ids(added) if added else []


def build_sft_data(cfg: Config, tokenizer: Any) -> Any:
    """Read, validate, mix and split the conversations; the SFT data module."""
    from llm.data.chat import ReadReport, mix, read_conversations, split_holdout
    from llm.data.sft import SFTDataModule

    train_specs, val_specs = chat_specs(cfg.data)
    total = ReadReport()
    per_source = {}
    loaded = []
    for sp in train_specs:
        convs, rep = read_conversations(sp, cfg.data.on_bad_row)
        loaded.append((sp, convs))
        total.merge(rep)
        per_source[sp.name or sp.path] = {"read": rep.read, "kept": rep.kept, "skipped": dict(rep.skipped), "weight": sp.weight}
    if val_specs:
        val = []
        for sp in val_specs:
            convs, rep = read_conversations(sp, cfg.data.on_bad_row)
            val += convs
            per_source["val:" + (sp.name or sp.path)] = {"read": rep.read, "kept": rep.kept, "skipped": dict(rep.skipped)}
    else:  # hold out the same conversations whatever the weights
        split = [(sp, split_holdout(convs, cfg.data.val_fraction, cfg.data.seed)) for sp, convs in loaded]
        loaded = [(sp, tr) for sp, (tr, _) in split]
        val = [c for _, (_, held) in split for c in held]
    train = mix(loaded, cfg.data.seed)
    if total.skipped:
        log.warning("SFT data: skipped %d bad record(s): %s", sum(total.skipped.values()), dict(total.skipped))
    return SFTDataModule(
        train,
        val,
        tokenizer,
        seq_len=cfg.data.seq_len,
        micro_batch_size=cfg.data.micro_batch_size,
        grad_accum=cfg.stage.grad_accum,
        packing=cfg.data.packing,
        seed=cfg.data.seed,
        on_truncated=cfg.data.on_truncated,
        val_batches=cfg.data.val_batches,
        read_report=per_source,
    )


def _read_sources(specs: list, read: Any, per_source: dict, tag: str) -> list:
    """Items of every source (``read(spec) -> (items, ReadReport)``), counted per source."""
    out: list = []
    for sp in specs:
        items, rep = read(sp)
        if rep.skipped:
            log.warning("%s: skipped %d bad record(s): %s", sp.path, sum(rep.skipped.values()), dict(rep.skipped))
        per_source[tag + (sp.name or sp.path)] = {"read": rep.read, "kept": rep.kept, "skipped": dict(rep.skipped), "items": len(items)}
        out += items
    return out


def build_preference_data(cfg: Config, tokenizer: Any) -> Any:
    """Preference pairs (reward model, DPO): ``data.sources`` / ``data.datasets`` paths; held
    out: ``data.val_datasets``, else ``val_fraction`` of the prompts (all pairs of a prompt on
    one side)."""
    from llm.data.preference import PreferenceDataModule, read_preferences, split_pairs

    train_specs, val_specs = chat_specs(cfg.data)
    per_source: dict[str, Any] = {}
    train = _read_sources(train_specs, lambda sp: read_preferences(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "")
    val = _read_sources(val_specs, lambda sp: read_preferences(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "val:")
    if not val_specs:
        train, val = split_pairs(train, cfg.data.val_fraction, cfg.data.seed)
    return PreferenceDataModule(
        train,
        val,
        tokenizer,
        seq_len=cfg.data.seq_len,
        micro_batch_size=cfg.data.micro_batch_size,
        grad_accum=cfg.stage.grad_accum,
        seed=cfg.data.seed,
        on_truncated=cfg.data.on_truncated,
        val_batches=cfg.data.val_batches,
        padding_side=cfg.data.padding_side,
        read_report=per_source,
    )


def build_prompt_data(cfg: Config, tokenizer: Any) -> Any:
    """PPO prompts: ``{"prompt": ...}`` records or conversation sources (their last user turn and
    what precedes it); held out as for SFT."""
    from llm.data.chat import Conversation, split_holdout
    from llm.data.preference import PromptDataModule, read_prompts

    train_specs, val_specs = chat_specs(cfg.data)
    per_source: dict[str, Any] = {}
    train = _read_sources(train_specs, lambda sp: read_prompts(sp, cfg.data.on_bad_row), per_source, "")
    val = _read_sources(val_specs, lambda sp: read_prompts(sp, cfg.data.on_bad_row), per_source, "val:")
    if not val_specs:
        tr, held = split_holdout([Conversation(p) for p in train], cfg.data.val_fraction, cfg.data.seed)
        train, val = [c.messages for c in tr], [c.messages for c in held]
    return PromptDataModule(
        train,
        val,
        tokenizer,
        max_prompt_tokens=cfg.stage.ppo.max_prompt_tokens,
        batch_size=cfg.data.micro_batch_size,
        seed=cfg.data.seed,
        on_truncated=cfg.data.on_truncated,
        val_batches=cfg.data.val_batches,
        read_report=per_source,
    )


# ---------------------------------------------------------------------- run dir etc.
def resolve_run_dir(cfg: Config) -> Path:
    if cfg.run_dir:
        run_dir = Path(cfg.run_dir)
    else:
        from hydra.core.hydra_config import HydraConfig

        run_dir = Path(HydraConfig.get().runtime.output_dir)
    run_dir = run_dir.absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def find_checkpoint(ckpt_path: Optional[str], run_dir: Path) -> Optional[str]:
    """``last``: the checkpoint with the highest step in run_dir/checkpoints (none: start fresh).
    A checkpoint is a file (single, ddp) or a directory of shards (DeepSpeed, FSDP); ``.tmp``
    ones are unfinished writes and never taken."""
    if not ckpt_path:
        return None
    if ckpt_path != "last":
        if not Path(ckpt_path).exists():
            raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such file or directory")
        return ckpt_path
    found = []
    for p in (run_dir / "checkpoints").glob("step*.ckpt"):
        m = CKPT_RE.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    if not found:
        log.info("ckpt_path=last: no checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        return None
    return str(max(found)[1])


def trim_metrics(run_dir: Path, ckpt: str) -> None:
    """On resume, drop metrics.csv rows of steps the checkpoint does not contain (they were
    logged after it, before the crash, and are about to be redone)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return
    m = CKPT_RE.search(Path(ckpt).name)
    if m:  # the file name holds the step (also for directory checkpoints)
        step = int(m.group(1))
    elif Path(ckpt).is_file():
        step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0)
    else:
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], [r for r in reader if r.get("step") and int(r["step"]) < step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


def _resumable_csv_logger(run_dir: Path) -> Any:
    """Lightning's CSVLogger deletes an existing metrics.csv when it starts; a resumed run must
    append to it instead (rows of redone steps were trimmed by ``trim_metrics``)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    class ResumableCSVLogger(CSVLogger):
        @property
        def experiment(self) -> Any:
            if self._experiment is not None or rank_zero_only.rank != 0:
                return super().experiment
            path = Path(self.log_dir) / "metrics.csv"
            keep = path.with_name("metrics.csv.keep")
            if path.is_file():
                os.replace(path, keep)
            exp = super().experiment
            if keep.is_file():
                os.replace(keep, path)
                with open(path, newline="") as f:
                    exp.metrics_keys = sorted(next(csv.reader(f), []))
            return exp

    return ResumableCSVLogger(save_dir=str(run_dir), name="", version="")


def build_loggers(cfg: Config, run_dir: Path) -> list:
    loggers: list = [_resumable_csv_logger(run_dir)]
    if cfg.logger.wandb:
        from lightning.pytorch.loggers import WandbLogger

        mode = _wandb_mode(cfg.logger.mode)
        os.environ.setdefault("WANDB_INIT_TIMEOUT", "60")
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                save_dir=str(run_dir),
                name=f"{cfg.stage.name}-{run_dir.name}",
                id=(run_dir.name + "-" + hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]).replace("/", "_"),
                resume="allow",
                mode=mode,
                tags=list(cfg.logger.tags),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


# ----------------------------------------------------------------------------- train
class _DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def _quiet_lightning() -> None:
    """Silence advice that does not apply to this framework (it would hide real warnings)."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):
        logging.getLogger(name).addFilter(_DropAdverts())
    for msg in (
        ".*does not have many workers.*",
        ".*Using ModelCheckpoint with manual optimization.*",  # we checkpoint after the step, by design
        ".*Experiment logs directory .* exists and is not empty.*",  # resume appends to metrics.csv
        ".*`IterableDataset` has `__len__` defined.*",  # ours is exact per rank and worker
        ".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*",
        ".*When saving the DeepSpeed Stage 3 checkpoint.*",  # the export is consolidated for the user
        ".*torch.distributed.(all_gather_into_tensor|reduce_scatter_tensor)` is deprecated.*",  # inside DeepSpeed
    ):
        warnings.filterwarnings("ignore", message=msg)


def check_strategy(cfg: Config, placement: Any) -> None:
    """Refuse, at start and with the reason, what a strategy cannot do."""
    name = cfg.strategy.name
    if name in ("single", "auto", "ddp"):
        return
    if cfg.stage.name == "ppo" and name != "fsdp":
        raise ValueError(
            f"stage=ppo does not run under strategy={name}: PPO takes several optimizer steps per iteration (its minibatch "
            "updates), with gradients it averages itself and generation between them, while DeepSpeed's engine owns the gradients "
            "and the step; under ZeRO-3 every generated token would also all-gather the weights (DeepSpeed-Chat needs its Hybrid "
            "Engine for this). Run PPO with strategy=ddp or strategy=fsdp, or use DPO (stage=dpo), which runs under every strategy")
    if cfg.stage.name == "ppo" and cfg.stage.ppo.critic == "separate":
        raise ValueError("stage=ppo with stage.ppo.critic=separate under strategy=fsdp: the separate critic is read through "
                         "its backbone, outside the forward that FSDP hooks; use stage.ppo.critic=shared (a value head) or strategy=ddp")
    if placement.param_sharded and cfg.eval.tasks and cfg.eval.every_n_steps > 0:
        raise ValueError(
            f"eval.every_n_steps={cfg.eval.every_n_steps} under strategy={name}: the evaluator runs on rank 0 alone, which "
            "holds only a shard of the weights; set eval.every_n_steps=0 (the suite still runs on the consolidated model at the end)")
    if name in ("deepspeed_zero3", "deepspeed_zero3_offload") and cfg.trainer.compile:
        raise ValueError(
            f"trainer.compile=true under strategy={name}: ZeRO-3 fetches each parameter in module hooks that torch.compile "
            "cannot trace through; use strategy=fsdp (compiled per layer) or deepspeed_zero1/2 to compile")


def train(cfg: Config | DictConfig) -> dict[str, Any]:
    """Run one stage from a composed config. Returns {"export": path | None, "metrics": {...}, ...}."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from llm.callbacks import CrashAtStep, DataReport, EvalSuite, Preemption, ProgressBar, SampleText, StateMemory
    from llm.data.overfit import OverfitDataModule
    from llm.data.shards import TokenDataModule
    from llm.export import export_hf
    from llm.model.generate import generate_text
    from llm.perf import peak_flops
    from llm.strategy import build_placement, consolidated_state_dict

    stage = cfg.stage.name
    if stage not in STAGES:
        raise ValueError(f"stage={stage}: unknown (choose one of {', '.join(STAGES)})")
    fine_tuning = stage != "pretrain"
    chat = fine_tuning
    if not cfg.model.pretrained and not cfg.stage.random_init:
        raise ValueError(
            f"stage={stage} starts from a pretrained model: set model=hf model.pretrained=<a stage-1 export, "
            "a Hugging Face model directory or a .gguf file>, or stage.random_init=true to train from random weights"
        )
    if cfg.stage.lora.enabled and not cfg.model.pretrained:
        raise ValueError("stage.lora.enabled: LoRA adapts a pretrained model; set model.pretrained")
    if stage == "rm" and cfg.stage.lora.enabled:
        raise ValueError("stage=rm trains the whole reward model; LoRA is offered for sft, dpo and ppo (set stage.lora.enabled=false)")
    if stage in ("rm", "ppo", "dpo") and not cfg.model.pretrained:
        raise ValueError(f"stage={stage} starts from a fine-tuned model: set model.pretrained=<an SFT export or HF directory>")
    _quiet_lightning()
    if cfg.eval.name == "auto":
        from llm.eval.__main__ import load_suite

        cfg.eval = load_suite(STAGE_SUITES.get(stage, "none"))
    run_dir = resolve_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    placement = build_placement(cfg.strategy, cfg.trainer, grad_clip=cfg.stage.optim.grad_clip, micro_batch_size=cfg.data.micro_batch_size)
    check_strategy(cfg, placement)

    new_ids: list[int] = []
    if fine_tuning:
        tokenizer, new_ids = load_sft_tokenizer(cfg, dedicated_pad=stage == "rm")
        if stage == "sft":
            dm_ft = build_sft_data(cfg, tokenizer)
        elif stage in ("rm", "dpo"):
            dm_ft = build_preference_data(cfg, tokenizer)
        else:
            dm_ft = build_prompt_data(cfg, tokenizer)
    else:
        tokenizer, shards = resolve_data(cfg.data)
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if cfg.data.seq_len > cfg.model.max_seq_len and not cfg.model.pretrained:
        raise ValueError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_seq_len={cfg.model.max_seq_len}")

    peak = cfg.trainer.peak_flops
    if peak is None:
        dev = torch.device("cuda") if placement.accelerator == "gpu" else torch.device("cpu")
        peak = peak_flops(dev, placement.precision)
    def make_module(for_training: bool = True) -> Any:
        m = STAGES[stage]()(
            cfg.model,
            cfg.stage,
            vocab_size=len(tokenizer),
            special_tokens=special,
            tokenizer=tokenizer,
            compile=cfg.trainer.compile and for_training,
            peak_flops=peak,
            new_token_ids=new_ids,
            activation_checkpointing=cfg.strategy.activation_checkpointing and for_training,
        )
        m.seq_len = cfg.data.seq_len
        return m

    module = make_module()
    if cfg.trainer.on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"trainer.on_nonfinite={cfg.trainer.on_nonfinite}: choose stop or skip")
    module.on_nonfinite, module.max_skipped_steps, module.nan_at_step = cfg.trainer.on_nonfinite, cfg.trainer.max_skipped_steps, cfg.trainer.nan_at_step

    if fine_tuning:
        dm = dm_ft
    else:
        dm = TokenDataModule(
            shards,
            seq_len=cfg.data.seq_len,
            micro_batch_size=cfg.data.micro_batch_size,
            grad_accum=cfg.stage.grad_accum,
            num_workers=cfg.data.num_workers,
            seed=cfg.data.seed,
            shuffle_block=cfg.data.shuffle_block,
            skip_corrupt=cfg.data.skip_corrupt,
            val_batches=cfg.data.val_batches,
        )
    tc = cfg.trainer
    overfit = tc.overfit_batches > 0
    if overfit:
        dm = OverfitDataModule(dm)

    callbacks: list = [DataReport()]
    if stage != "ppo" and not placement.param_sharded:
        callbacks.append(SampleText(cfg.stage.sample_every_n_steps, list(cfg.stage.sample_prompts), cfg.stage.sample_max_new_tokens, chat=chat))
    elif stage != "ppo" and cfg.stage.sample_every_n_steps and cfg.stage.sample_prompts:
        log.info("strategy=%s: no samples during training (each rank holds a shard of the weights); the samples at the end "
                 "come from the consolidated model", cfg.strategy.name)
    ckpt_cb = None
    if tc.ckpt_every_n_steps > 0 and not tc.fast_dev_run:
        ckpt_cb = ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=tc.ckpt_every_n_steps,
            save_top_k=tc.ckpt_keep,
            monitor="step",
            mode="max",
            save_last=False,
        )
        callbacks.append(ckpt_cb)
    if cfg.eval.tasks and cfg.eval.every_n_steps > 0:
        callbacks.append(EvalSuite(cfg.eval))
    if tc.memory_report:
        callbacks.append(StateMemory(cfg.strategy.name))
    if tc.crash_at_step is not None:
        callbacks.append(CrashAtStep(tc.crash_at_step))
    preempt = None
    if os.environ.get("XIULIAN_PREEMPT_FILE"):  # set by slurm/stage.sh: the flag its USR1 trap creates
        preempt = Preemption(os.environ["XIULIAN_PREEMPT_FILE"])
        callbacks.append(preempt)
    if tc.progress_bar:
        callbacks.append(ProgressBar(leave=True))

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
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        if stage == "sft":
            rep = dm.write_report(run_dir)
            _log_sft_report(dm.report(), rep)
        elif stage in ("rm", "dpo"):
            rep = dm.write_report(run_dir)
            log.info("preference data: %s (report: %s)", {k: v for k, v in dm.report().items() if k in ("train", "val")}, rep)
        elif stage == "ppo":
            log.info("prompts: %s", {k: v for k, v in dm.report().items() if k in ("train", "val")})
    ckpt = find_checkpoint(cfg.ckpt_path, run_dir)
    if ckpt and trainer.is_global_zero:
        log.info("resuming from %s", ckpt)
        trim_metrics(run_dir, ckpt)
    val_before = tc.val_before_train if tc.val_before_train is not None else stage != "pretrain"
    before: dict[str, float] = {}
    if val_before and not ckpt and not overfit and not tc.fast_dev_run:
        before = {k: float(v) for k, v in trainer.validate(module, datamodule=dm, verbose=False, weights_only=cfg.weights_only)[0].items()} if _has_val(dm) else {}
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
            log.warning("stopped for preemption at step %d; the checkpoint is in %s (no export: the run is not finished)",
                        preempt.preempted_at, run_dir / "checkpoints")
        return result
    if ckpt_cb is not None and trainer.global_step > 0:
        final = Path(ckpt_cb.dirpath) / f"step{trainer.global_step:07d}.ckpt"
        if not trainer.strategy.broadcast(final.exists()):
            trainer.save_checkpoint(final, weights_only=False)
    # ZeRO-3 and FSDP: gather the shards (every rank takes part) into a plain model on rank 0
    full = consolidated_state_dict(trainer.strategy, module) if placement.param_sharded else None
    if trainer.is_global_zero:
        if full is not None:
            plain = make_module(for_training=False)
            plain.configure_model()
            plain.load_state_dict(full)
            module = plain
            result["module"] = plain
            log.info("consolidated the %s shards into one model for export", cfg.strategy.name)
        model = module.model
        prompts = list(cfg.stage.sample_prompts) if stage != "rm" else []
        if prompts:
            texts = generate_text(model, tokenizer, prompts, cfg.stage.sample_max_new_tokens, chat=chat)
            result["samples"] = list(zip(prompts, texts))
            print("\nsamples (greedy):")
            for p, t in result["samples"]:
                print(f"  {p!r} -> {t!r}")
        if cfg.export and not tc.fast_dev_run:
            extra = {"stage": stage, "model": cfg.model.name, "base": cfg.model.pretrained, "global_step": trainer.global_step, "tokens_seen": module.tokens_seen, "metrics": result["metrics"]}
            if cfg.stage.lora.enabled:
                from llm.model.lora import save_adapter

                adapter = save_adapter(model, tokenizer, run_dir / "adapters" / cfg.stage.lora.name, cfg.stage.lora.name)
                result["adapter"] = str(adapter)
                print(f"adapter: {adapter}", flush=True)
                model = model.merge_and_unload()  # training is over: the export is base + adapter, plain HF
                module.model = model
                extra["lora"] = {"name": cfg.stage.lora.name, "adapter": str(adapter)}
            stop = None
            if fine_tuning:
                from llm.data.chat import stop_token_ids

                stop = stop_token_ids(tokenizer)
            path = export_hf(model, tokenizer, run_dir / "export", extra=extra, eos_token_id=stop)
            result["export"] = str(path)
        if cfg.eval.tasks and cfg.eval.at_end and not tc.fast_dev_run:
            result["eval"] = final_eval(cfg, model, tokenizer, trainer, Path(result["export"] or run_dir))
    for lg in trainer.loggers:  # end the W&B run: a later train() in this process starts its own
        if type(lg).__name__ == "WandbLogger" and trainer.is_global_zero and getattr(lg, "_experiment", None) is not None:
            lg.experiment.finish()
    return result


def final_eval(cfg: Config, model: Any, tokenizer: Any, trainer: Any, where: Path) -> dict[str, Any]:
    """The evaluation suite on the trained model: logged as ``eval/<task>/<metric>`` at the last
    step (CSV, W&B) and written to ``eval_results.json`` in the export directory."""
    from llm.eval.core import flat_metrics, run_suite, write_results

    res = run_suite(model, tokenizer, cfg.eval, say=lambda s: log.info("%s", s))
    res.update(stage=cfg.stage.name, global_step=trainer.global_step, model=str(where))
    for lg in trainer.loggers:
        lg.log_metrics(flat_metrics(res), step=trainer.global_step)
        lg.save()
    path = write_results(res, where / "eval_results.json")
    log.info("eval results: %s", path)
    return res


def _has_val(dm: Any) -> bool:
    has = getattr(dm, "has_split", None)
    return bool(has("val")) if has is not None else True


def _log_sft_report(rep: dict, path: Path) -> None:
    tr, va = rep["train"], rep["val"]
    log.info(
        "SFT data: %d train / %d val conversations, %d assistant tokens; truncated %d, dropped (no assistant "
        "token left) %d; %d rows%s. Report: %s",
        tr.get("conversations", 0), va.get("conversations", 0), tr.get("assistant_tokens", 0), tr.get("truncated", 0) + va.get("truncated", 0),
        tr.get("dropped_no_assistant_tokens", 0) + va.get("dropped_no_assistant_tokens", 0), tr["rows"],
        f", packed {tr['row_fill']:.0%} full" if tr.get("row_fill") is not None else "", path,
    )
    dropped = tr.get("dropped_no_assistant_tokens", 0) + va.get("dropped_no_assistant_tokens", 0)
    if dropped:
        log.warning("SFT data: %d conversation(s) had no assistant token left after truncation to seq_len and were not trained on (see %s)", dropped, path)


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    result = train(cfg)
    if result["export"]:
        print(f"export: {result['export']}", flush=True)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
