"""Text generation shared by the CLI, training-time samples, evaluation and RL rollouts.

Uses transformers' ``generate`` (KV cache on). Greedy by default; sampling with temperature,
top-k and top-p when asked.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch


@torch.no_grad()
def generate_text(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: Optional[int] = None,
    stop_at_eos: bool = True,
    chat: bool = False,
    return_ids: bool = False,
) -> list[Any]:
    """Continue each prompt; returns only the new text (prompts are not repeated).

    ``chat=True``: each prompt is a user message (a string) or a whole conversation (a list of
    ``{"role", "content"}``), rendered with the tokenizer's chat template and its generation
    prompt; generation stops at the template's end-of-turn token or eos.
    ``return_ids=True``: returns the new token ids (lists) instead of text.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos: Any = tokenizer.eos_token_id if stop_at_eos else None
    if chat and stop_at_eos:
        from llm.data.chat import stop_token_ids

        eos = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generator_state = None
    if seed is not None:
        generator_state = torch.get_rng_state()
        torch.manual_seed(seed)
    outs = []
    try:
        for prompt in prompts:  # one at a time: no padding subtleties, fine for a few samples
            if chat:
                from llm.data.chat import render_text

                msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
                prompt = render_text(tokenizer, msgs, add_generation_prompt=True)
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
            if ids.shape[1] == 0:
                ids = torch.tensor([[tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos]], device=device)
            kwargs: dict[str, Any] = dict(
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                use_cache=True,
                eos_token_id=eos,
                pad_token_id=pad,
                attention_mask=torch.ones_like(ids),
            )
            if do_sample:
                kwargs.update(temperature=temperature, top_k=top_k, top_p=top_p)
            else:
                kwargs.update(temperature=None, top_k=None, top_p=None)
            out = model.generate(ids, **kwargs)
            new = out[0, ids.shape[1]:]
            outs.append(new.tolist() if return_ids else tokenizer.decode(new, skip_special_tokens=True))
    finally:
        if generator_state is not None:
            torch.set_rng_state(generator_state)
        model.train(was_training)
    return outs
