"""Continue a prompt with an exported model: ``python -m llm.generate <export dir> "prompt"``.

Greedy by default; ``--sample`` with ``--temperature``, ``--top-k``, ``--top-p``; KV cache on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.generate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a Hugging Face model directory (e.g. a run's export/)")
    ap.add_argument("prompt", nargs="+", help="one or more prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--trust-remote-code", action="store_true", help="allow code shipped with the checkpoint to run (off by default)")
    args = ap.parse_args(argv)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.model.engine import generate_text

    path = Path(args.model)
    if not (path / "config.json").is_file():
        sys.exit(f"error: {path} is not a Hugging Face model directory (no config.json)")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=args.trust_remote_code).to(args.device)
    outs = generate_text(
        model,
        tok,
        args.prompt,
        args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
    )
    for prompt, text in zip(args.prompt, outs):
        print(prompt + text)
        if len(args.prompt) > 1:
            print("-" * 40)


if __name__ == "__main__":
    main()
