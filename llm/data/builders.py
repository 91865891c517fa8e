"""Each stage's data, built from the config: the tokenizer and the LightningDataModule.

One builder per kind of data; a stage's declaration (``llm.stages``) names the one it uses:

- :func:`pretrain_data`: text prepared into WebDataset token shards (cached), or given shards;
- :func:`sft_data`: conversations, mixed and held out, rendered with the chat template;
- :func:`preference_data` / :func:`reward_data`: preference pairs (DPO / the reward model);
- :func:`prompt_data`: prompts for PPO rollouts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llm.config import Config, DataConfig

log = logging.getLogger(__name__)


@dataclass
class StageData:
    """What a stage trains on."""

    tokenizer: Any
    """A Hugging Face tokenizer (``len()`` is the vocabulary the model needs)."""
    datamodule: Any
    """The LightningDataModule of the stage."""
    new_token_ids: list[int] = field(default_factory=list)
    """Tokens the chat template added to the tokenizer: the model's embeddings grow for them."""
    announce: Callable[[Path], None] | None = None
    """Called once on rank 0 with the run directory before training: writes and logs the data report."""


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
        d = OmegaConf.to_container(d, resolve=True, enum_to_str=True) if OmegaConf.is_config(d) else dict(d)
        return DatasetSpec(**d)

    train = [spec(d) for d in cfg.datasets] + [DatasetSpec(path=str(p)) for p in cfg.sources]
    val = [spec(d) for d in cfg.val_datasets]
    if not train:
        raise ValueError("stage=sft: no conversations; set data.sources=[file.jsonl] or data.datasets=[{path: ..., weight: ...}]")
    return train, val


def load_chat_tokenizer(cfg: Config, dedicated_pad: bool = False) -> tuple[Any, list[int]]:
    """The tokenizer of the checkpoint being fine-tuned, with a chat template (``data.chat_template``:
    its own, the framework default, or the user's file or string, checked on a probe conversation).
    Returns (tokenizer, ids of added tokens).

    ``dedicated_pad`` (the reward model): when the pad token is missing or is also a token of
    conversations (eos, end-of-turn: SmolLM2 pads with ``<|im_end|>``), a ``<|pad|>`` token is
    added, so that transformers' sequence-classification forward, which reads the score at the
    last non-pad token, agrees with the training read-out on the exported model."""
    from transformers import AutoTokenizer

    from llm.data.chat import check_chat_template, ensure_chat_template, read_chat_template
    from llm.data.tokenizer import load_tokenizer
    from llm.model.build import resolve_pretrained

    if cfg.data.tokenizer:
        tok = load_tokenizer(cfg.data.tokenizer)
    elif cfg.model.pretrained:
        tok = AutoTokenizer.from_pretrained(str(resolve_pretrained(cfg.model.pretrained)), trust_remote_code=cfg.model.trust_remote_code)
    else:
        raise ValueError("stage=sft with random_init needs a tokenizer: set data.tokenizer=<dir>")
    choice = str(cfg.data.chat_template)
    if choice == "default":
        tok.chat_template = None
    elif choice != "auto":
        tok.chat_template = read_chat_template(choice)
    added = ensure_chat_template(tok)
    if choice not in ("auto", "default"):
        where = "data.chat_template (inline template)" if "{{" in choice or "{%" in choice else f"data.chat_template={choice}"
        check_chat_template(tok, where)
        log.info("chat template: the user's, %s", where)
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
    return SFTDataModule(train, val, tokenizer, packing=cfg.data.packing, read_report=per_source, **_batching(cfg))


def _batching(cfg: Config) -> dict[str, Any]:
    """The settings every conversation-pair data module shares."""
    d = cfg.data
    return dict(
        seq_len=d.seq_len,
        micro_batch_size=d.micro_batch_size,
        grad_accum=cfg.stage.grad_accum,
        seed=d.seed,
        on_truncated=d.on_truncated,
        val_batches=d.val_batches,
        warn_truncated_share=d.warn_truncated_share,
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

    if cfg.stage.name == "dpo" and str(cfg.stage.dpo.loss) == "kto":
        return build_kto_data(cfg, tokenizer)
    train_specs, val_specs = chat_specs(cfg.data)
    per_source: dict[str, Any] = {}
    train = _read_sources(train_specs, lambda sp: read_preferences(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "")
    val = _read_sources(val_specs, lambda sp: read_preferences(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "val:")
    if not val_specs:
        train, val = split_pairs(train, cfg.data.val_fraction, cfg.data.seed)
    return PreferenceDataModule(train, val, tokenizer, padding_side=cfg.data.padding_side, read_report=per_source, **_batching(cfg))


def build_kto_data(cfg: Config, tokenizer: Any) -> Any:
    """KTO examples (``stage.dpo.loss=kto``): unpaired thumbs-up/down records, pairs (two examples
    each) or rankings, from the same sources and held out the same way as pairs."""
    from llm.data.preference import KTODataModule, read_kto, split_pairs

    train_specs, val_specs = chat_specs(cfg.data)
    per_source: dict[str, Any] = {}
    train = _read_sources(train_specs, lambda sp: read_kto(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "")
    val = _read_sources(val_specs, lambda sp: read_kto(sp.path, cfg.data.on_bad_row, cfg.data.seed), per_source, "val:")
    if not val_specs:
        train, val = split_pairs(train, cfg.data.val_fraction, cfg.data.seed)
    dm = KTODataModule(train, val, tokenizer, padding_side=cfg.data.padding_side, read_report=per_source, **_batching(cfg))
    c, d = dm.counts["train"], cfg.stage.dpo
    n_d, n_u = c["desirable"], c["undesirable"]
    ratio = d.desirable_weight * n_d / (d.undesirable_weight * n_u) if n_u else float("inf")
    if not 1 <= ratio <= 4 / 3:
        log.warning(
            "KTO data: %d desirable and %d undesirable training examples: desirable_weight x %d / (undesirable_weight x %d) = %.2f, "
            "outside the paper's advised [1, 4/3]; adjust stage.dpo.desirable_weight / undesirable_weight",
            n_d,
            n_u,
            n_d,
            n_u,
            ratio,
        )
    return dm


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


def _log_sft_report(rep: dict, path: Path) -> None:
    tr, va = rep["train"], rep["val"]
    log.info(
        "SFT data: %d train / %d val conversations, %d assistant tokens; truncated %d, dropped (no assistant "
        "token left) %d; %d rows%s. Report: %s",
        tr.get("conversations", 0),
        va.get("conversations", 0),
        tr.get("assistant_tokens", 0),
        tr.get("truncated", 0) + va.get("truncated", 0),
        tr.get("dropped_no_assistant_tokens", 0) + va.get("dropped_no_assistant_tokens", 0),
        tr["rows"],
        f", packed {tr['row_fill']:.0%} full" if tr.get("row_fill") is not None else "",
        path,
    )
    dropped = tr.get("dropped_no_assistant_tokens", 0) + va.get("dropped_no_assistant_tokens", 0)
    if dropped:
        log.warning(
            "SFT data: %d conversation(s) had no assistant token left after truncation to seq_len and were not trained on (see %s)",
            dropped,
            path,
        )


# ------------------------------------------------------------------ one builder per kind of data
def pretrain_data(cfg: Config) -> StageData:
    """Text -> tokenizer and token shards (prepared once, cached), or ``data.shards`` as given."""
    from llm.data.shards.datamodule import TokenDataModule

    tokenizer, shards = resolve_data(cfg.data)
    d = cfg.data
    dm = TokenDataModule(
        shards,
        seq_len=d.seq_len,
        micro_batch_size=d.micro_batch_size,
        grad_accum=cfg.stage.grad_accum,
        num_workers=d.num_workers,
        seed=d.seed,
        shuffle_block=d.shuffle_block,
        skip_corrupt=d.skip_corrupt,
        val_batches=d.val_batches,
    )
    return StageData(tokenizer, dm)


def sft_data(cfg: Config) -> StageData:
    tokenizer, new_ids = load_chat_tokenizer(cfg)
    dm = build_sft_data(cfg, tokenizer)

    def announce(run_dir: Path) -> None:
        _log_sft_report(dm.report(), dm.write_report(run_dir))

    return StageData(tokenizer, dm, new_ids, announce)


def _preference_data(cfg: Config, dedicated_pad: bool) -> StageData:
    tokenizer, new_ids = load_chat_tokenizer(cfg, dedicated_pad=dedicated_pad)
    dm = build_preference_data(cfg, tokenizer)

    def announce(run_dir: Path) -> None:
        rep = dm.write_report(run_dir)
        log.info("preference data: %s (report: %s)", {k: v for k, v in dm.report().items() if k in ("train", "val")}, rep)

    return StageData(tokenizer, dm, new_ids, announce)


def preference_data(cfg: Config) -> StageData:
    """Preference pairs for DPO, IPO and SimPO; KTO examples for ``stage.dpo.loss=kto``."""
    return _preference_data(cfg, dedicated_pad=False)


def reward_data(cfg: Config) -> StageData:
    """Preference pairs for the reward model, whose tokenizer gets a pad token of its own (see
    :func:`load_chat_tokenizer`)."""
    return _preference_data(cfg, dedicated_pad=True)


def prompt_data(cfg: Config) -> StageData:
    tokenizer, new_ids = load_chat_tokenizer(cfg)
    dm = build_prompt_data(cfg, tokenizer)

    def announce(run_dir: Path) -> None:
        log.info("prompts: %s", {k: v for k, v in dm.report().items() if k in ("train", "val")})

    return StageData(tokenizer, dm, new_ids, announce)
