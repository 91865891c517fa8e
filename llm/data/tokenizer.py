"""Byte-level BPE tokenizer: training, saving (atomically) and loading.

The tokenizer is a HF ``tokenizers`` byte-level BPE (GPT-2 style pre-tokenisation, no prefix
space, the full 256-symbol byte alphabet), so *any* string -- English, Chinese, emoji, odd
whitespace -- encodes and decodes back exactly. It is wrapped in a
``transformers.PreTrainedTokenizerFast`` and saved with ``save_pretrained`` so that
``transformers.AutoTokenizer.from_pretrained(dir)`` loads it.

Special tokens (fixed ids, reserved before any merge):

====  ==================  ===============================================
id    token               use
====  ==================  ===============================================
0     ``<|endoftext|>``   end of document (eos) and beginning (bos)
1     ``<|pad|>``         padding
2     ``<|system|>``      chat: system turn
3     ``<|user|>``        chat: user turn
4     ``<|assistant|>``   chat: assistant turn
5     ``<|end|>``         chat: end of a turn
====  ==================  ===============================================
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "SPECIAL_TOKENS",
    "EOT_TOKEN",
    "PAD_TOKEN",
    "SYSTEM_TOKEN",
    "USER_TOKEN",
    "ASSISTANT_TOKEN",
    "END_TOKEN",
    "train_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
]

EOT_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SYSTEM_TOKEN = "<|system|>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_TOKEN = "<|end|>"

#: ordered: token i gets id i
SPECIAL_TOKENS: list[str] = [EOT_TOKEN, PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, END_TOKEN]

_BYTE_ALPHABET_SIZE = 256


def _atomic_replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished directory ``tmp`` to ``final``, replacing an existing ``final``.

    ``os.replace`` cannot replace a non-empty directory, so an existing one is first renamed
    aside and deleted afterwards; at every instant ``final`` is either absent, the old complete
    directory or the new complete one.
    """
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    try:  # make the renames durable
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - e.g. filesystems without directory fsync
        pass


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | os.PathLike,
    min_frequency: int = 2,
    *,
    show_progress: bool = True,
):
    """Train a byte-level BPE tokenizer on ``texts`` and save it to ``out_dir``.

    ``vocab_size`` counts everything: the 6 special tokens, the 256 byte symbols and the
    merges (it must be at least 262; the result can be smaller if the text runs out of pairs
    occurring ``min_frequency`` times). The directory is written to a temporary sibling and
    renamed into place, so ``out_dir`` never holds a half-written tokenizer.

    Returns the ``PreTrainedTokenizerFast`` (its ``name_or_path`` is ``out_dir``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = len(SPECIAL_TOKENS) + _BYTE_ALPHABET_SIZE
    if not isinstance(vocab_size, int) or vocab_size < minimum:
        raise ValueError(f"vocab_size must be an int >= {minimum} (6 special tokens + 256 bytes), got {vocab_size!r}")
    if min_frequency < 1:
        raise ValueError(f"min_frequency must be >= 1, got {min_frequency}")
    out_dir = Path(out_dir)

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    n_docs = 0

    def counted():
        nonlocal n_docs
        for t in texts:
            n_docs += 1
            yield t

    tok.train_from_iterator(counted(), trainer=trainer)
    if n_docs == 0:
        raise ValueError("train_tokenizer: no texts to train on")
    for i, t in enumerate(SPECIAL_TOKENS):  # the trainer adds them first, in order
        got = tok.token_to_id(t)
        if got != i:  # pragma: no cover - would be a tokenizers behaviour change
            raise RuntimeError(f"special token {t} got id {got}, expected {i}")

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOT_TOKEN,
        bos_token=EOT_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=None,
        clean_up_tokenization_spaces=False,  # exact round trip of whitespace
    )
    # the chat tokens are in the vocab as special added tokens; expose them for the SFT stage
    fast.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[2:]})

    save_tokenizer(fast, out_dir)
    return fast


def save_tokenizer(tokenizer, out_dir: str | os.PathLike) -> Path:
    """``save_pretrained`` into a temporary sibling of ``out_dir``, then rename it into place.

    Replaces an existing ``out_dir``; sets ``tokenizer.name_or_path`` to ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700
        tokenizer.save_pretrained(str(tmp))
        _atomic_replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tokenizer.name_or_path = str(out_dir)
    return out_dir


def load_tokenizer(path: str | os.PathLike):
    """Load a tokenizer saved by :func:`train_tokenizer` (or any local HF tokenizer dir)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {path} (expected a directory written by train_tokenizer)")
    return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
