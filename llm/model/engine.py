"""The one generation engine. Training-time samples, the final samples, ``xiulian generate``,
chat, evaluation, the ranking page and PPO rollouts all generate through :class:`Engine`.

Decided here, once:

- **where generation stops** (:func:`stop_ids`): a chat model at its template's end-of-turn
  token or eos (``llm.data.chat.stop_token_ids``), a plain language model at eos;
- **the padding token** (:func:`pad_id`): the tokenizer's, else eos;
- **decoding** (:class:`Sampling` -> :func:`generate_kwargs`): greedy, or sampling with
  temperature, top-k and top-p, where ``None`` means the filter is off (never transformers'
  ``generation_config`` default), with the KV cache on.

Prompts are rendered with the chat template when ``chat`` is set, and start with the BOS token
exactly once when the tokenizer uses one (``llm.data.chat.with_bos``). A faster engine (vLLM) would
plug in behind the same methods.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Sampling:
    """How tokens are chosen."""

    max_new_tokens: int = 64
    do_sample: bool = False
    """``False``: greedy (the other fields but ``max_new_tokens`` are ignored)."""
    temperature: float = 1.0
    top_k: int | None = None
    """Keep the k most likely tokens (``None``: no top-k filter)."""
    top_p: float | None = None
    """Nucleus sampling (``None``: no top-p filter)."""


def stop_ids(tokenizer: Any, chat: bool, model: Any = None) -> Any:
    """The token ids that end a generation. A chat model: its template's end-of-turn token, the
    tokenizer's eos and the ids the model's own ``generation_config`` stops at (Llama 3 lists
    two); a plain language model: eos."""
    if not chat:
        return tokenizer.eos_token_id
    from llm.data.chat import stop_token_ids

    ids = stop_token_ids(tokenizer)
    declared = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for i in declared if isinstance(declared, (list, tuple)) else [declared]:
        if i is not None and int(i) not in ids:
            ids.append(int(i))
    return ids


def pad_id(tokenizer: Any) -> int | None:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def generate_kwargs(sampling: Sampling, eos: Any, pad: int | None) -> dict[str, Any]:
    """The keyword arguments of transformers' ``generate`` for ``sampling``."""
    kw: dict[str, Any] = dict(max_new_tokens=sampling.max_new_tokens, eos_token_id=eos, pad_token_id=pad, use_cache=True)
    if sampling.do_sample:
        kw.update(do_sample=True, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    return kw


class Engine:
    """Generation with one model and its tokenizer."""

    def __init__(self, model: Any, tokenizer: Any, chat: bool = False, stop_at_eos: bool = True) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat
        self.eos = stop_ids(tokenizer, chat, model) if stop_at_eos else None
        self.pad = pad_id(tokenizer)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, sampling: Sampling, **extra: Any) -> torch.Tensor:
        """New tokens [B, R] after each prompt of ``input_ids`` [B, P] (left-padded); rows that
        stopped early are padded. ``extra`` goes to transformers' ``generate`` (``synced_gpus``,
        ``streamer``). The model is in eval mode meanwhile and returns to its mode after."""
        was = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(
                input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs(sampling, self.eos, self.pad), **extra
            )
        finally:
            self.model.train(was)
        return out[:, input_ids.shape[1] :]

    def encode_prompt(self, prompt: Any) -> torch.Tensor:
        """[1, P] ids of one prompt: text, or (``chat``) a user message or a whole conversation
        rendered with the chat template and its generation prompt. A tokenizer that uses a BOS
        token (``llm.data.chat.uses_bos``) gets it first exactly once, whether or not the template
        wrote it; one that does not gets none."""
        from llm.data.chat import render_text, with_bos

        if self.chat:
            msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            prompt = render_text(self.tokenizer, msgs, add_generation_prompt=True)
        ids = with_bos(self.tokenizer, self.tokenizer(prompt, add_special_tokens=False).input_ids)
        if not ids:
            eos = self.eos[0] if isinstance(self.eos, list) else self.eos
            ids = [self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else eos]
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def complete(self, prompts: Sequence[Any], sampling: Sampling, seed: int | None = None, return_ids: bool = False) -> list[Any]:
        """Continue each prompt, one at a time (no padding subtleties; for a few samples): the new
        text only (or the new ids). ``seed`` fixes the sampling and leaves the global RNG as it was."""
        state = None
        if seed is not None:
            state = torch.get_rng_state()
            torch.manual_seed(seed)
        outs = []
        try:
            for prompt in prompts:
                ids = self.encode_prompt(prompt)
                new = self.generate(ids, torch.ones_like(ids), sampling)[0]
                outs.append(new.tolist() if return_ids else self.tokenizer.decode(new, skip_special_tokens=True))
        finally:
            if state is not None:
                torch.set_rng_state(state)
        return outs

    def stream(self, prompt: Any, sampling: Sampling, context: Any = None) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated (generation runs in a thread;
        its error is raised here). ``context``: entered around generation (e.g. adapters off)."""
        from transformers import TextIteratorStreamer

        ids = self.encode_prompt(prompt)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        error: list[BaseException] = []

        def run() -> None:
            try:
                with context if context is not None else contextlib.nullcontext():
                    self.generate(ids, torch.ones_like(ids), sampling, streamer=streamer)
            except BaseException as e:  # surfaced in the caller's thread
                error.append(e)
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        yield from streamer
        worker.join()
        if error:
            raise error[0]


def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Any],
    max_new_tokens: int = 64,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop_at_eos: bool = True,
    chat: bool = False,
    return_ids: bool = False,
) -> list[Any]:
    """``Engine(model, tokenizer, chat).complete(prompts, ...)`` in one call: the new text of each
    prompt (``return_ids``: the new ids). ``chat=True``: each prompt is a user message or a whole
    conversation, and generation stops at the end of the assistant's turn."""
    engine = Engine(model, tokenizer, chat=chat, stop_at_eos=stop_at_eos)
    sampling = Sampling(max_new_tokens, do_sample, temperature, top_k, top_p)
    return engine.complete(prompts, sampling, seed=seed, return_ids=return_ids)
