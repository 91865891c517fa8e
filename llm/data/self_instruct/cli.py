"""Self-instruct command line: ``python -m llm.data.self_instruct`` / ``xiulian self-instruct``."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llm.data.self_instruct.filters import FilterConfig
from llm.data.self_instruct.loop import run_self_instruct, summary_line, write_outputs
from llm.data.self_instruct.prompts import load_seed_tasks
from llm.data.self_instruct.teachers import TeacherError, make_teacher


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.data.self_instruct",
        description="Self-Instruct (Wang et al. 2022): generate SFT data from seed tasks with a teacher model.",
    )
    p.add_argument("--teacher", required=True, help="model directory, .gguf file, or OpenAI-compatible URL (http://host:port/v1)")
    p.add_argument("--seed-tasks", required=True, help="seed tasks: jsonl with 'instruction' (+ 'input', 'output') or text, one per line")
    p.add_argument("--out", required=True, help="output .jsonl (the report goes to OUT.report.json)")
    p.add_argument("--num-tasks", type=int, default=100, help="items to generate (default 100)")
    p.add_argument(
        "--batch",
        type=int,
        default=8,
        help="propose prompts per round; local: generation batch size; HTTP: concurrent requests (default 8)",
    )
    p.add_argument("--per-prompt", type=int, default=8, help="new instructions asked for per propose prompt (default 8)")
    p.add_argument(
        "--num-examples", type=int, default=8, help="in-context example instructions per propose prompt (default 8, up to 2 generated)"
    )
    p.add_argument("--max-new-tokens", type=int, default=512, help="reply length limit for every request (default 512)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature, 0 = greedy (default 0.7)")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling for a local teacher (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--similarity", type=float, default=0.7, help="ROUGE-L F1 at which an instruction is a near-duplicate (default 0.7)")
    p.add_argument("--keep-truncated", action="store_true", help="keep inputs/answers cut off by --max-new-tokens")
    p.add_argument("--patience", type=int, default=5, help="stop after this many rounds in a row keep nothing (default 5)")
    p.add_argument("--max-rounds", type=int, default=None, help="stop after this many rounds")
    p.add_argument("--model-name", default=None, help="model name sent to an HTTP teacher (default 'default')")
    p.add_argument("--api-key-env", default=None, help="environment variable holding the HTTP teacher's API key")
    p.add_argument("--timeout", type=float, default=120.0, help="HTTP request timeout in seconds (default 120)")
    p.add_argument("--retries", type=int, default=5, help="HTTP retries on 429/5xx/connection errors (default 5)")
    p.add_argument("--trace", default=None, help="write every teacher request and reply to this jsonl file")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads for a local teacher (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name, value, low in (("--num-tasks", args.num_tasks, 1), ("--batch", args.batch, 1), ("--per-prompt", args.per_prompt, 1),
                             ("--num-examples", args.num_examples, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--patience", args.patience, 1), ("--retries", args.retries, 0)):  # fmt: skip
        if value < low:
            raise SystemExit(f"self-instruct: error: {name} must be >= {low}, got {value}")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or not 0 < args.similarity <= 1:
        raise SystemExit("self-instruct: error: need --temperature >= 0, 0 < --top-p <= 1, 0 < --similarity <= 1")
    try:
        seeds = load_seed_tasks(args.seed_tasks)
        teacher = make_teacher(
            args.teacher,
            model_name=args.model_name,
            api_key_env=args.api_key_env,
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_new_tokens,
            batch=args.batch,
            seed=args.seed,
            timeout=args.timeout,
            retries=args.retries,
            num_threads=args.threads,
        )
        with contextlib.ExitStack() as stack:
            trace: Callable[[dict[str, Any]], None] | None = None
            if args.trace:
                Path(args.trace).parent.mkdir(parents=True, exist_ok=True)
                trace_file = stack.enter_context(open(args.trace, "w", encoding="utf-8"))

                def write_event(event: dict[str, Any]) -> None:
                    trace_file.write(json.dumps(event, ensure_ascii=False) + "\n")
                    trace_file.flush()

                trace = write_event

            result = run_self_instruct(
                teacher,
                seeds,
                num_tasks=args.num_tasks,
                prompts_per_round=args.batch,
                per_prompt=args.per_prompt,
                num_examples=args.num_examples,
                seed=args.seed,
                filters=FilterConfig(similarity=args.similarity, keep_truncated=args.keep_truncated),
                patience=args.patience,
                max_rounds=args.max_rounds,
                progress=not args.no_progress,
                trace=trace,
            )
        result.report["settings"].update(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
        out, _ = write_outputs(result, args.out)
    except (TeacherError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"self-instruct: error: {e}") from None
    print(summary_line(result.report, out), flush=True)
    return 130 if result.report["interrupted"] else 0
