"""Self-instruct generation loop: rounds of propose / input / answer requests with the filters
between them (``run_self_instruct``), and the atomic output files with their report."""

from __future__ import annotations

import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm.data.self_instruct.filters import (
    DedupIndex,
    FilterConfig,
    answer_drop_reason,
    input_drop_reason,
    instruction_drop_reason,
)
from llm.data.self_instruct.prompts import (
    SOURCE,
    SeedTask,
    _parse_items,
    _split_input,
    clean_answer,
    input_demos,
    input_messages,
    propose_messages,
    sft_record,
    user_content,
)
from llm.data.self_instruct.teachers import Message, Teacher, TeacherError, is_truncated


@dataclass
class Item:
    instruction: str
    input: str = ""
    answer: str = ""
    round: int = 0

    def record(self) -> dict[str, Any]:
        return sft_record(self.instruction, self.input, self.answer)


@dataclass
class SelfInstructResult:
    items: list[Item]
    report: dict[str, Any]


@dataclass
class _Counts:
    rounds: int = 0
    requests: Counter = field(default_factory=Counter)
    proposed: int = 0
    accepted: int = 0
    surplus: int = 0
    inputs_kept: int = 0
    with_input: int = 0
    answers_kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    drop_examples: dict[str, list[str]] = field(default_factory=dict)

    def drop(self, stage: str, reason: str, text: str, keep_examples: int = 3) -> None:
        key = f"{stage}/{reason}"
        self.dropped[key] += 1
        ex = self.drop_examples.setdefault(key, [])
        if len(ex) < keep_examples:
            ex.append(text[:200])


class _Progress:
    """tqdm if installed, else rich, else nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self._tqdm = self._rich = None
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm

            self._tqdm = tqdm(total=total, desc="self-instruct", unit="task", dynamic_ncols=True)
        except ImportError:
            try:
                from rich.progress import Progress

                self._rich = Progress(transient=False)
                self._rich.start()
                self._task = self._rich.add_task("self-instruct", total=total)
            except ImportError:
                pass

    def update(self, n: int) -> None:
        if self._tqdm is not None:
            self._tqdm.update(n)
        elif self._rich is not None:
            self._rich.advance(self._task, n)

    def stage(self, text: str) -> None:
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=True)
        elif self._rich is not None:
            self._rich.update(self._task, description=f"self-instruct [{text}]")

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
        elif self._rich is not None:
            self._rich.stop()


def _request(
    teacher: Teacher,
    conversations: list[list[Message]],
    counts: _Counts,
    kind: str,
    trace: Callable[[dict[str, Any]], None] | None,
) -> list[str]:
    replies = teacher.complete(conversations)
    if len(replies) != len(conversations):
        raise TeacherError(f"{teacher.name}: {len(replies)} replies to {len(conversations)} requests")
    counts.requests[kind] += len(conversations)
    if trace is not None:
        for conv, reply in zip(conversations, replies):
            trace({"round": counts.rounds, "kind": kind, "messages": conv, "reply": str(reply), "truncated": is_truncated(reply)})
    return replies


def run_self_instruct(
    teacher: Teacher,
    seeds: Sequence[SeedTask],
    *,
    num_tasks: int,
    prompts_per_round: int = 8,
    per_prompt: int = 8,
    num_examples: int = 8,
    machine_examples: int = 2,
    seed: int = 0,
    filters: FilterConfig | None = None,
    patience: int = 5,
    max_rounds: int | None = None,
    progress: bool = True,
    trace: Callable[[dict[str, Any]], None] | None = None,
) -> SelfInstructResult:
    """Generate up to ``num_tasks`` items.

    ``trace``, when given, is called with every request and reply (``{"round", "kind",
    "messages", "reply", "truncated"}``). Ctrl-C stops early and returns what was kept, with
    ``report["interrupted"] = True``.
    """
    if num_tasks < 1:
        raise ValueError("num_tasks must be >= 1")
    if not seeds:
        raise ValueError("no seed tasks")
    filters = filters or FilterConfig()
    rng = random.Random(seed)
    seed_instructions = [s.instruction for s in seeds]
    seed_index = DedupIndex(seed_instructions)
    gen_index = DedupIndex()  # accepted generated instructions
    kept: list[Item] = []
    counts = _Counts()
    stale = 0
    interrupted = False
    stop_reason = "done"
    start = time.monotonic()
    bar = _Progress(num_tasks, progress)
    try:
        while len(kept) < num_tasks:
            if max_rounds is not None and counts.rounds >= max_rounds:
                stop_reason = f"max_rounds ({max_rounds})"
                break
            if stale >= patience:
                stop_reason = f"patience ({patience} rounds in a row kept nothing)"
                break
            counts.rounds += 1
            rnd = counts.rounds
            remaining = num_tasks - len(kept)

            # 1. propose instructions
            bar.stage(f"round {rnd}: proposing")
            convs = []
            for _ in range(prompts_per_round):
                n_machine = min(machine_examples, len(gen_index), num_examples)
                n_seed = min(num_examples - n_machine, len(seed_instructions))
                examples = rng.sample(seed_instructions, n_seed) + rng.sample(gen_index.texts, n_machine)
                convs.append(propose_messages(examples, per_prompt))
            replies = _request(teacher, convs, counts, "propose", trace)
            accepted: list[str] = []
            round_index = DedupIndex()
            for reply in replies:
                items, closed = _parse_items(reply)
                if is_truncated(reply) and items and not closed:
                    counts.proposed += 1
                    counts.drop("instruction", "truncated", items.pop())
                for ins in items:
                    counts.proposed += 1
                    reason = instruction_drop_reason(ins, filters)
                    if reason is None and seed_index.most_similar(ins, filters.similarity)[0] >= filters.similarity:
                        reason = "duplicate_of_seed"
                    if reason is None and (
                        gen_index.most_similar(ins, filters.similarity)[0] >= filters.similarity
                        or round_index.most_similar(ins, filters.similarity)[0] >= filters.similarity
                    ):
                        reason = "duplicate"
                    if reason is not None:
                        counts.drop("instruction", reason, ins)
                        continue
                    accepted.append(ins)
                    round_index.add(ins)
            counts.surplus += max(0, len(accepted) - remaining)
            accepted = accepted[:remaining]
            counts.accepted += len(accepted)
            for ins in accepted:
                gen_index.add(ins)

            # 2. inputs
            new_items: list[Item] = []
            if accepted:
                bar.stage(f"round {rnd}: {len(accepted)} inputs")
                convs = [input_messages(i, input_demos(seeds, rng)) for i in accepted]
                replies = _request(teacher, convs, counts, "input", trace)
                for ins, reply in zip(accepted, replies):
                    inp, cut = _split_input(reply)
                    reason = input_drop_reason(ins, inp, is_truncated(reply) and not cut, filters)
                    if reason is not None:
                        counts.drop("input", reason, reply)
                        continue
                    counts.inputs_kept += 1
                    counts.with_input += bool(inp)
                    new_items.append(Item(ins, inp, round=rnd))

            # 3. answers
            round_kept: list[Item] = []
            if new_items:
                bar.stage(f"round {rnd}: {len(new_items)} answers")
                convs = [[{"role": "user", "content": user_content(it.instruction, it.input)}] for it in new_items]
                replies = _request(teacher, convs, counts, "answer", trace)
                for it, reply in zip(new_items, replies):
                    answer = clean_answer(reply)
                    reason = answer_drop_reason(it.instruction, answer, is_truncated(reply), filters, inp=it.input)
                    if reason is not None:
                        counts.drop("answer", reason, reply)
                        continue
                    it.answer = answer
                    round_kept.append(it)
            counts.answers_kept += len(round_kept)
            kept.extend(round_kept)
            bar.update(len(round_kept))
            stale = 0 if round_kept else stale + 1
    except KeyboardInterrupt:
        interrupted = True
        stop_reason = "interrupted"
    finally:
        bar.close()

    dropped_by_stage: dict[str, dict[str, int]] = {}
    for key, n in sorted(counts.dropped.items()):
        stage, reason = key.split("/", 1)
        dropped_by_stage.setdefault(stage, {})[reason] = n
    report: dict[str, Any] = {
        "source": SOURCE,
        "teacher": teacher.name,
        "num_tasks": num_tasks,
        "kept": len(kept),
        "stop_reason": stop_reason,
        "interrupted": interrupted,
        "rounds": counts.rounds,
        "seed_tasks": len(seeds),
        "requests": dict(counts.requests),
        "stages": {
            "propose": {
                "parsed": counts.proposed,
                "accepted": counts.accepted,
                "surplus": counts.surplus,
                "dropped": sum(dropped_by_stage.get("instruction", {}).values()),
            },
            "input": {
                "asked": counts.accepted,
                "kept": counts.inputs_kept,
                "with_input": counts.with_input,
                "dropped": sum(dropped_by_stage.get("input", {}).values()),
            },
            "answer": {
                "asked": counts.inputs_kept,
                "kept": counts.answers_kept,
                "dropped": sum(dropped_by_stage.get("answer", {}).values()),
            },
        },
        "dropped": dropped_by_stage,
        "dropped_total": sum(counts.dropped.values()),
        "drop_examples": counts.drop_examples,
        "settings": {
            "seed": seed,
            "prompts_per_round": prompts_per_round,
            "per_prompt": per_prompt,
            "num_examples": num_examples,
            "machine_examples": machine_examples,
            "patience": patience,
            "max_rounds": max_rounds,
            "filters": vars(filters).copy(),
        },
        "elapsed_s": round(time.monotonic() - start, 3),
    }
    return SelfInstructResult(kept, report)


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def report_path(out: str | os.PathLike) -> Path:
    """``data/x.jsonl`` -> ``data/x.report.json``."""
    out = Path(out)
    return out.with_name(out.stem + ".report.json") if out.suffix else out.with_name(out.name + ".report.json")


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(result: SelfInstructResult, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the SFT jsonl and its report, each atomically; returns both paths."""
    out = Path(out)
    rep = report_path(out)
    if rep == out:
        raise ValueError(f"{out}: the output and the report would be the same file")
    text = "".join(json.dumps(it.record(), ensure_ascii=False) + "\n" for it in result.items)
    _atomic_write_text(out, text)
    report = dict(result.report, output=str(out))
    _atomic_write_text(rep, json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return out, rep


def summary_line(report: dict[str, Any], out: Path) -> str:
    drops = ", ".join(f"{stage}/{reason}={n}" for stage, reasons in report["dropped"].items() for reason, n in reasons.items())
    req = sum(report["requests"].values())
    return (
        f"self-instruct: kept {report['kept']}/{report['num_tasks']} tasks in {report['rounds']} round(s), "
        f"{req} teacher requests, {report['dropped_total']} dropped"
        + (f" ({drops})" if drops else "")
        + f", stop: {report['stop_reason']}, {report['elapsed_s']:.1f}s -> {out}"
    )
