"""Chat with a fine-tuned model: interactive in the terminal, or one-shot.

Uses the chat template saved with the model (the checkpoint's own, or the framework default),
streams tokens as they are generated (KV cache), keeps the multi-turn history, and stops at
the template's end-of-turn token. Several LoRA adapters can be loaded side by side on one
base and chosen by name, per request.

    python -m llm.chat outputs/sft/run/export                      # interactive
    python -m llm.chat outputs/sft/run/export -p "What is the csv module for?"   # one-shot
    python -m llm.chat BASE --adapter faq=runs/a/adapters/faq --adapter code=runs/b/adapters/code \\
        --use faq -p "How do I install Debian?"

Interactive commands: ``/reset`` (forget the history), ``/adapter NAME`` (switch adapters;
``/adapter base`` runs the base alone), ``/system TEXT`` (set a system message), ``/exit``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

from llm.model.engine import Engine, Sampling


class ChatSession:
    """A model, its tokenizer and a conversation history."""

    def __init__(
        self,
        model_path: str,
        adapters: dict[str, str] | None = None,
        use: str | None = None,
        system: str | None = None,
        device: str = "cpu",
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 0.95,
        seed: int | None = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.data.chat import ensure_chat_template
        from llm.model.build import resolve_pretrained

        path = resolve_pretrained(model_path)
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tok_dir = path
        if adapters:
            from llm.model.lora import load_with_adapters

            self.model = load_with_adapters(path, adapters, dtype=dtype)
            first = next(iter(adapters.values()))
            if (Path(first) / "tokenizer_config.json").is_file():
                tok_dir = Path(first)  # the adapter carries the template it was trained with
            self.adapter_names = list(adapters)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
            self.adapter_names = []
        self.model.to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        if ensure_chat_template(self.tokenizer):
            print("[chat] this model has no chat template and no chat tokens; using the framework default", file=sys.stderr)
        self.engine = Engine(self.model, self.tokenizer, chat=True)
        self.device = device
        self.adapter: str | None = None
        if adapters:
            self.set_adapter(use or self.adapter_names[0])
        self.system = system
        self.history: list[dict[str, str]] = []
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        if seed is not None:
            torch.manual_seed(seed)

    def set_adapter(self, name: str) -> None:
        if name == "base":
            if not self.adapter_names:
                raise ValueError("no adapters loaded")
            self.adapter = "base"
            return
        if name not in self.adapter_names:
            raise ValueError(f"unknown adapter {name!r}; loaded: {', '.join(self.adapter_names) or 'none'} (or 'base')")
        self.model.set_adapter(name)
        self.adapter = name

    def reset(self) -> None:
        self.history = []

    def messages(self, user: str) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + self.history + [{"role": "user", "content": user}]

    def stream(self, user: str) -> Iterator[str]:
        """Yield the answer's text pieces as they are generated; the turn joins the history."""
        sampling = Sampling(self.max_new_tokens, do_sample=self.temperature > 0, temperature=self.temperature, top_p=self.top_p)
        ctx = self.model.disable_adapter() if self.adapter == "base" else None
        pieces = []
        for piece in self.engine.stream(self.messages(user), sampling, context=ctx):
            pieces.append(piece)
            yield piece
        self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(pieces).strip()}]

    def ask(self, user: str) -> str:
        return "".join(self.stream(user)).strip()


def _parse_adapters(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            path, name = item, Path(item).name
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.chat", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="HF model directory (an export), or the base model when --adapter is given; .gguf works too")
    ap.add_argument("-p", "--prompt", action="append", help="one-shot: ask this (repeat for a multi-turn exchange) and exit")
    ap.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="load a LoRA adapter by name (repeatable)")
    ap.add_argument("--use", help="the adapter to answer with (default: the first)")
    ap.add_argument("--system", help="a system message")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    try:
        chat = ChatSession(
            args.model,
            _parse_adapters(args.adapter),
            args.use,
            args.system,
            args.device,
            args.max_new_tokens,
            args.temperature,
            args.top_p,
            args.seed,
        )
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")

    def answer(text: str) -> None:
        for piece in chat.stream(text):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()

    if args.prompt:
        for p in args.prompt:
            answer(p)
        return
    tag = f" [{chat.adapter}]" if chat.adapter else ""
    print(f"chatting with {args.model}{tag}; /reset, /adapter NAME, /system TEXT, /exit", file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            return
        if line == "/reset":
            chat.reset()
            print("[history cleared]", file=sys.stderr)
            continue
        if line.startswith("/adapter"):
            try:
                chat.set_adapter(line.split(maxsplit=1)[1] if " " in line else "")
                print(f"[adapter: {chat.adapter}]", file=sys.stderr)
            except ValueError as e:
                print(f"[{e}]", file=sys.stderr)
            continue
        if line.startswith("/system"):
            chat.system = line[len("/system") :].strip() or None
            continue
        sys.stdout.write("ai> ")
        answer(line)


if __name__ == "__main__":
    main()
