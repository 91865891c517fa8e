"""Self-instruct prompts: seed tasks, the three requests to the teacher (propose, input,
answer) and how their replies are read, and the SFT record of a finished item."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm.data.self_instruct.teachers import Message

SOURCE = "self-instruct"
NOINPUT = "<noinput>"


# --------------------------------------------------------------------------------------------
# Seeds, prompts, records
# --------------------------------------------------------------------------------------------


@dataclass
class SeedTask:
    instruction: str
    input: str = ""
    output: str = ""


def load_seed_tasks(path: str | os.PathLike) -> list[SeedTask]:
    """Seed tasks from JSON lines (``instruction``, optional ``input``/``output`` or
    ``instances: [{input, output}]``) or plain text (one instruction per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such seed-task file")
    lines = path.read_text(encoding="utf-8").splitlines()
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    tasks: list[SeedTask] = []
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or first.startswith("{"):
        for no, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{no}: not a JSON object ({e.msg}); expected JSON lines or one instruction per line") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("instruction"), str) or not obj["instruction"].strip():
                raise ValueError(f'{path}:{no}: expected an object with a non-empty "instruction" string')
            inp, out = obj.get("input", ""), obj.get("output", "")
            instances = obj.get("instances")
            if isinstance(instances, list) and instances and isinstance(instances[0], dict):
                inp = inp or instances[0].get("input", "")
                out = out or instances[0].get("output", "")
            tasks.append(SeedTask(obj["instruction"].strip(), str(inp or "").strip(), str(out or "").strip()))
    else:
        tasks = [SeedTask(ln.strip()) for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not tasks:
        raise ValueError(f"{path}: no seed tasks")
    return tasks


def propose_messages(examples: Sequence[str], n: int) -> list[Message]:
    """The request for ``n`` new instructions given example instructions."""
    listing = "\n".join(f"{i}. {' '.join(e.split())}" for i, e in enumerate(examples, 1))
    content = (
        "Come up with new, diverse task instructions for an AI assistant. Here are some examples:\n\n"
        f"{listing}\n\n"
        f"Write {n} new task instructions that are different from the examples: vary the verbs, "
        "topics and kinds of task (questions, writing, rewriting, classification, reasoning). "
        "Each must be something a text-only assistant can do in a short reply (no images, audio, "
        "files or web browsing). "
        f"Reply with a numbered list 1. to {n}., one instruction per line, and nothing else."
    )
    return [{"role": "user", "content": content}]


# shown as earlier turns of the input request when the seeds have no task with (or without) input
DEFAULT_INPUT_DEMOS = (
    SeedTask(
        "Classify the sentiment of this review as positive or negative.",
        "The food was cold and the waiter ignored us for twenty minutes.",
    ),
    SeedTask("Give three tips for staying healthy."),
)


def _input_ask(instruction: str) -> str:
    return (
        f"Task instruction: {instruction}\n\n"
        "Write a short, realistic input for this task: the text, sentence, list or data it "
        "should be applied to. If the instruction is complete on its own and needs no input, "
        f"reply with exactly {NOINPUT}. Reply with the input only: no explanation, no answer."
    )


def input_messages(instruction: str, demos: Sequence[SeedTask] = ()) -> list[Message]:
    """The request for an input to ``instruction`` (or ``<noinput>``), after one earlier
    exchange per demo task (the same request, answered with its input or ``<noinput>``): the
    paper's in-context instances, as chat turns."""
    messages: list[Message] = []
    for d in demos:
        messages.append({"role": "user", "content": _input_ask(d.instruction)})
        messages.append({"role": "assistant", "content": d.input or NOINPUT})
    messages.append({"role": "user", "content": _input_ask(instruction)})
    return messages


def input_demos(seeds: Sequence[SeedTask], rng: random.Random) -> list[SeedTask]:
    """One seed task with an input and one without (built-in ones where the seeds have none),
    in random order."""
    with_input = [s for s in seeds if s.input]
    without = [s for s in seeds if not s.input]
    demos = [
        rng.choice(with_input) if with_input else DEFAULT_INPUT_DEMOS[0],
        rng.choice(without) if without else DEFAULT_INPUT_DEMOS[1],
    ]
    rng.shuffle(demos)
    return demos


def user_content(instruction: str, inp: str = "") -> str:
    return instruction + ("\n\n" + inp if inp else "")


def sft_record(instruction: str, inp: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": user_content(instruction, inp)},
            {"role": "assistant", "content": answer},
        ],
        "source": SOURCE,
    }


# --------------------------------------------------------------------------------------------
# Reading replies
# --------------------------------------------------------------------------------------------

_ITEM_RE = re.compile(
    r"^\s*(?:>\s*)?(?:#+\s*)?"  # quote / heading marks
    r"(?:(?:task|instruction|question)\s*#?\s*)?(\d{1,3})\s*(?:[.)．:：\]]\s*(.*)|$)"  # "1." "2)" "Task 3:" "4"
    r"|^\s*[-*•]\s+(.*)$",  # bullets
    re.IGNORECASE,
)
_LABEL_RE = re.compile(r"^\s*(?:new\s+)?(?:task|instruction|question|prompt)\s*(?:\d{1,3})?\s*[:：]\s*", re.IGNORECASE)
_STOP_RE = re.compile(r"^\s*(?:input|output|answer|response|example|solution)\s*[:：]", re.IGNORECASE)


def _clean_instruction(text: str) -> str:
    text = _LABEL_RE.sub("", text.strip())
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text


def parse_numbered_list(text: str) -> list[str]:
    """The items of a numbered list (``1.``, ``2)``, ``Task 3:``, ``**4.**``; ``-``/``*`` bullets
    when there are no numbers) in a teacher reply.

    Text before the first item is ignored (a preamble). A line that is not an item continues
    the current item, unless it starts with ``Input:``/``Output:``/``Answer:``/``Example:``,
    which ends it (the model answering its own task), or follows a blank line. Items are
    whitespace-normalised, with a leading ``Instruction:``/``Task:`` label and surrounding
    quotes removed; an empty item stays as ``""`` so that the caller can count it.
    """
    return _parse_items(text)[0]


def _parse_items(text: str) -> tuple[list[str], bool]:
    """``parse_numbered_list`` and whether the last item was closed (by a blank line, an
    ``Output:``-like label or any line that is not part of it): a truncated reply whose last
    item is not closed may have lost the end of that item."""
    numbered: list[list[str]] = []
    bullets: list[list[str]] = []
    current: list[str] | None = None
    stopped = False
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.replace("**", "").replace("__", "")
        m = _ITEM_RE.match(line)
        if m and m.group(1) is not None:
            current, stopped = [m.group(2) or ""], False
            numbered.append(current)
        elif m and not numbered:
            current, stopped = [m.group(3)], False
            bullets.append(current)
        elif current is not None and line.strip():
            if _STOP_RE.match(line) or (m and numbered):
                stopped = True  # the model answering its own task, or a bullet under an item
            elif not stopped:
                current.append(line)
        elif current is not None and not line.strip() and current != [""]:
            stopped = True  # a blank line ends an item; text after it is not a continuation
    items = numbered or bullets
    return [_clean_instruction(" ".join(parts)) for parts in items], stopped


_NOINPUT_RE = re.compile(
    r"^[\s\"'`(<\[]*(?:no[\s_-]?input|none|n/?a|null|nil|empty|no input (?:is )?(?:needed|required))[\s\"'`)>\].]*$",
    re.IGNORECASE,
)
_NEEDS_NO_INPUT_RE = re.compile(
    r"\b(?:does not|doesn't|do not|don't) (?:need|require) (?:an?y? )?input\b|\bno input (?:is )?(?:needed|required)\b",
    re.IGNORECASE,
)
_INPUT_LABEL_RE = re.compile(
    r"^\s*(?:(?:here(?:'s| is) )?(?:an? |the )?(?:short |sample |example |possible |realistic )*input\s*(?:for (?:this|the) task\s*)?[:：])\s*",
    re.IGNORECASE,
)
_INPUT_END_RE = re.compile(
    r"^\s*\**\s*(?:output|answer|response|explanation|solution|task|instruction)\s*\**\s*[:：]", re.IGNORECASE | re.MULTILINE
)


def _split_input(text: str) -> tuple[str, bool]:
    """(input, cut): the input and whether text after it (an ``Output:`` section, ...) was cut."""
    t = text.strip().replace("**", "")
    if NOINPUT in t.lower():
        return "", True
    m = _INPUT_END_RE.search(t)
    cut = m is not None
    if m is not None:
        t = t[: m.start()]
    t = _INPUT_LABEL_RE.sub("", t, count=1).strip()
    first_line = t.split("\n", 1)[0]
    if not t or _NOINPUT_RE.match(t) or _NEEDS_NO_INPUT_RE.search(first_line):
        return "", True
    quoted = re.match(r'^"([^"]+)"[ \t]*(?:\n\s*\n|$)', t)
    if quoted:  # a quoted input, maybe followed by a paragraph of comment: the quoted part
        return quoted.group(1).strip(), cut or quoted.end() < len(t)
    return t, cut


def parse_input(text: str) -> str:
    """The input in an input reply: ``""`` for ``<noinput>`` (or "None", "N/A", "This
    instruction does not require an input", ...), else the text with an ``Input:`` label,
    surrounding quotes and any ``Output:``/``Answer:``/``Explanation:`` section removed."""
    return _split_input(text)[0]


def clean_answer(text: str) -> str:
    """The answer text with an ``Output:``/``Answer:`` label removed and whitespace trimmed."""
    t = text.strip()
    t = re.sub(r"^\s*(?:\**\s*(?:output|answer|response)\s*\**\s*[:：]\s*\**)", "", t, flags=re.IGNORECASE)
    return t.strip()
