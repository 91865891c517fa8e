"""``xiulian <command> [arguments]``: one console command for every tool, as a table.

Each command is the ``main`` of a module that also runs as ``python -m <module>``; the arguments
after the command go to it unchanged (``xiulian train`` takes Hydra overrides, the others their
own ``--help``). ``xiulian bench <kind>`` picks one of the benchmarks.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

#: command -> (module whose ``main`` runs it, one line of help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("llm.train", "train one stage: Hydra overrides, e.g. stage=sft model=hf model.pretrained=DIR data=sft_demo"),
    "data": ("llm.data.__main__", "the stage-1 cleaning pipeline: raw pages -> filtered, deduplicated text -> token shards"),
    "prepare": ("llm.data.prepare", "text files -> a BPE tokenizer and WebDataset token shards"),
    "self-instruct": ("llm.data.self_instruct", "grow instruction data from seed tasks with a teacher model"),
    "eval": ("llm.eval.__main__", "evaluate a model directory or .gguf on a suite of conf/eval"),
    "harness": ("llm.eval.harness", "write a conf/eval suite as lm-evaluation-harness tasks"),
    "scaling": ("llm.eval.scaling", "scaling-law sweeps and fits"),
    "generate": ("llm.generate", "continue a prompt with a model directory"),
    "chat": ("llm.chat", "chat with an instruction-tuned model in the terminal"),
    "plan": ("llm.plan", "memory per rank of a model, strategy and precision; settings that fit a GPU (--gpu-memory 80GB --nodes 8)"),
    "rank": ("llm.rank", "the ranking page: people order answers into preference pairs"),
    "bench": ("llm.bench.train", "benchmarks against named baselines; `xiulian bench KIND --help`"),
}

#: ``xiulian bench <kind>`` -> module whose ``main`` runs that benchmark
BENCHMARKS: dict[str, tuple[str, str]] = {
    "train": ("llm.bench.train", "training loop vs a bare PyTorch loop (and litgpt, TRL with --baselines)"),
    "sft": ("llm.bench.sft", "SFT vs TRL's SFTTrainer; full vs LoRA memory"),
    "rl": ("llm.bench.rl", "PPO vs TRL"),
    "grpo": ("llm.bench.grpo", "GRPO vs TRL GRPOTrainer"),
    "data": ("llm.bench.data", "the stage-1 pipeline's blocks vs datatrove's"),
    "data_lang": ("llm.bench.data_lang", "clean Chinese kept by the stage-1 heuristics vs its English original"),
    "harmful_models": ("llm.bench.harmful_models", "harmful-content classifiers: size and held-out accuracy per bucket count"),
    "data_scale": ("llm.bench.data_scale", "the whole stage-1 pipeline at N documents: peak RSS and docs/s per stage"),
    "strategies": ("llm.bench.strategies", "memory and throughput per rank of DDP, ZeRO 1/2/3 and FSDP"),
    "litgpt": ("llm.bench.litgpt", "our pretraining loop vs litgpt's"),
    "plan": ("llm.bench.plan", "the memory planner's prediction vs measured per-rank memory of real runs"),
    "export": ("llm.bench.export", "rank 0's peak memory of the sharded (FSDP) export: consolidated vs streamed"),
    "startup": ("llm.bench.startup", "per-rank peak memory of the FSDP start-up: whole model vs sharded start"),
    "rollout_zero": ("llm.bench.rollout_zero", "GRPO rollout tokens/s under ZeRO-3 (weights gathered once or per token) vs DDP"),
}


def _usage(table: dict[str, tuple[str, str]], prog: str) -> str:
    width = max(map(len, table))
    rows = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in table.items())
    return f"usage: {prog} <command> [arguments]\n\ncommands:\n{rows}\n"


def resolve(argv: list[str]) -> tuple[Callable[[], object], list[str], str]:
    """(the command's main, its arguments, its program name) for ``xiulian`` + ``argv``."""
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        raise SystemExit(f"xiulian: unknown command {cmd!r}\n\n" + _usage(COMMANDS, "xiulian"))
    module, prog = COMMANDS[cmd][0], f"xiulian {cmd}"
    if cmd == "bench" and rest and rest[0] in BENCHMARKS:
        module, prog, rest = BENCHMARKS[rest[0]][0], f"xiulian bench {rest[0]}", rest[1:]
    elif cmd == "bench" and rest and not rest[0].startswith("-"):
        raise SystemExit(f"xiulian bench: unknown benchmark {rest[0]!r}\n\n" + _usage(BENCHMARKS, "xiulian bench"))
    return importlib.import_module(module).main, rest, prog


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(
            _usage(COMMANDS, "xiulian")
            + "\nbenchmarks (xiulian bench KIND):\n"
            + "\n".join(f"  {k:<10}  {h}" for k, (_, h) in BENCHMARKS.items())
        )
        return
    fn, rest, prog = resolve(argv)
    # every main reads sys.argv (Hydra's does, argparse's do when given no list)
    sys.argv = [prog, *rest]
    code = fn()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
