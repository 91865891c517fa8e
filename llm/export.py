"""The hand-off format between stages: a plain Hugging Face model directory.

config.json, model.safetensors, tokenizer files and generation_config.json; `transformers`
loads it with no code of ours. Written into a temporary sibling directory and renamed into
place, so a crash never leaves a half-written export under the final name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from llm.writes import write_guard


def export_hf(model: Any, tokenizer: Any, out_dir: str | os.PathLike, extra: dict | None = None, eos_token_id: Any = None) -> Path:
    """Write ``model`` and ``tokenizer`` as a plain HF directory. ``eos_token_id`` (an id or a
    list: a chat model stops at its end-of-turn token) goes into generation_config.json."""
    out = Path(out_dir).absolute()
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    with write_guard(out, "export"):
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    gen = GenerationConfig(
        bos_token_id=getattr(tokenizer, "bos_token_id", None),
        eos_token_id=eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None),
        pad_token_id=getattr(tokenizer, "pad_token_id", None),
        do_sample=False,
        max_new_tokens=128,
    )
    gen.save_pretrained(tmp)
    if extra:
        (tmp / "xiulian.json").write_text(json.dumps(extra, indent=2, default=str))
    old = out.with_name(out.name + ".old")
    if out.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(out, old)
    os.replace(tmp, out)
    if old.exists():
        shutil.rmtree(old)
    return out
