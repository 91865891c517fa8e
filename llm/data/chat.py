"""Conversations for instruction fine-tuning: reading, validation, the chat template, and the
token-level labels that put the loss on the assistant's tokens only.

Formats (one record per line of a ``.jsonl`` file, or a ``.json`` list; ``format=auto`` tells
them apart by their keys):

* ``openai``   ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``
* ``alpaca``   ``{"instruction": "...", "input": "..." (optional), "output": "...", "system": optional}``
* ``sharegpt`` ``{"conversations": [{"from": "system"|"human"|"gpt", "value": "..."}, ...]}``
* ``task``     any labelled record (``{"text": ..., "label": ...}``) turned into an instruction by
  a FLAN-style template (:data:`TASK_TEMPLATES` or a format string of the record's fields).

Every conversation is checked: known roles only, non-empty content, a system message only
first, a user turn before the first assistant turn, and the last message from the assistant.
A bad record raises :class:`ChatDataError` naming ``file:line`` and the field
(``messages[2].role``), or, with ``on_error="skip"``, is counted by reason.

Labels come from the rendered text, not from token arithmetic: the conversation is rendered
with the tokenizer's own chat template (ChatML for SmolLM2/Qwen, Llama-3's, ...) or the
framework default, and for each assistant turn the character span between "everything before
it + the generation prompt" and "everything up to and including its end-of-turn marker" is
located. Tokens inside those spans carry loss; system, user, role-marker and padding tokens do
not. That works for any template whose rendering of a prefix of the conversation is a prefix
of the rendering of the whole (checked; an error says so otherwise).

The framework default reuses the turn markers a tokenizer already has (:data:`MARKER_TEMPLATES`)
and adds its own four tokens only when there are none. A tokenizer that starts its texts with a
BOS token (:func:`uses_bos`) gets it first exactly once: the default template writes
``{{ bos_token }}``, :func:`render_text` puts it first for a template that does not, and the text
is tokenised with ``add_special_tokens=False`` so the tokenizer adds no second one.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import random
import sysconfig
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100
BUILTIN_PYTHON_QA = "builtin:python-qa"

#: The framework's template for checkpoints that have none: role markers and an end-of-turn
#: token, all special tokens of the stage-1 tokenizer (``<|system|>``, ``<|user|>``,
#: ``<|assistant|>``, ``<|end|>``). A tokenizer that starts its texts with a BOS token gets
#: ``{{ bos_token }}`` in front (:func:`default_chat_template`).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
DEFAULT_CHAT_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
DEFAULT_END_TOKEN = "<|end|>"

#: Turn markers a tokenizer without a chat template may already hold as special tokens, in the
#: order they are looked for: ``name: (marker tokens, template)``. The first family whose markers
#: are all single special tokens of the tokenizer renders the default template, so no token is
#: added (the framework's own markers come first: the stage-1 tokenizer has them).
MARKER_TEMPLATES: dict[str, tuple[tuple[str, ...], str]] = {
    "xiulian": (DEFAULT_CHAT_TOKENS, DEFAULT_CHAT_TEMPLATE),
    "chatml": (
        ("<|im_start|>", "<|im_end|>"),
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ),
    "llama3": (
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "{% for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    "gemma": (
        ("<start_of_turn>", "<end_of_turn>"),
        "{% for message in messages %}"
        "{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role']) + '\\n'"
        " + message['content'] + '<end_of_turn>' + '\\n' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    ),
}

#: FLAN-style instruction templates for labelled data (``format: task``). ``{field}`` is a field
#: of the record; the answer is ``answer`` (default ``{label}``).
TASK_TEMPLATES: dict[str, dict[str, str]] = {
    "sentiment": {
        "prompt": "What is the sentiment of the following text? Answer positive or negative.\n\n{text}",
        "answer": "{label}",
    },
    "classify": {
        "prompt": "Classify the following text into one of these categories: {options}.\n\nText: {text}",
        "answer": "{label}",
    },
    "topic": {"prompt": "{text}\n\nWhat is this text about?", "answer": "{label}"},
    "qa": {"prompt": "{question}", "answer": "{answer}"},
    "summarize": {"prompt": "Summarize the following text in one sentence.\n\n{text}", "answer": "{summary}"},
    "translate": {"prompt": "Translate the following text into {target_language}.\n\n{text}", "answer": "{translation}"},
}


class ChatDataError(ValueError):
    """A record that is not a valid conversation; the message names file, line and field."""


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    origin: str = ""
    """``file:line`` (or ``builtin:...#i``): where it came from, for error messages."""


@dataclass
class DatasetSpec:
    """One source of conversations in a mixture (see ``ChatDatasetConfig`` in llm/config.py)."""

    path: str
    format: str = "auto"
    weight: float = 1.0
    template: str | None = None
    answer: str | None = None
    system: str | None = None
    name: str | None = None


@dataclass
class ReadReport:
    read: int = 0
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)

    def merge(self, other: ReadReport) -> None:
        self.read += other.read
        self.kept += other.kept
        self.skipped.update(other.skipped)


# ------------------------------------------------------------------------------- validation
def validate_messages(messages: Any, where: str, field_name: str = "messages") -> list[dict[str, str]]:
    """Check one conversation; return it as a list of ``{"role", "content"}`` dicts."""
    if not isinstance(messages, list) or not messages:
        raise ChatDataError(f"{where}: {field_name}: expected a non-empty list of messages")
    out = []
    for i, m in enumerate(messages):
        f = f"{field_name}[{i}]"
        if not isinstance(m, dict):
            raise ChatDataError(f"{where}: {f}: expected an object with role and content")
        if "role" not in m:
            raise ChatDataError(f"{where}: {f}.role: missing role")
        role = m["role"]
        if role not in ROLES:
            raise ChatDataError(f"{where}: {f}.role: unknown role {role!r} (expected one of {', '.join(ROLES)})")
        if "content" not in m or m["content"] is None:
            raise ChatDataError(f"{where}: {f}.content: missing content")
        content = m["content"]
        if not isinstance(content, str):
            raise ChatDataError(f"{where}: {f}.content: expected a string, got {type(content).__name__}")
        if not content.strip():
            raise ChatDataError(f"{where}: {f}.content: empty content")
        if role == "system" and i != 0:
            raise ChatDataError(f"{where}: {f}.role: a system message may only come first")
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    if "assistant" not in roles:
        raise ChatDataError(f"{where}: {field_name}: no assistant message (nothing to learn from)")
    first_a = roles.index("assistant")
    if "user" not in roles[:first_a]:
        raise ChatDataError(f"{where}: {field_name}[{first_a}].role: an assistant turn before any user turn")
    if roles[-1] != "assistant":
        raise ChatDataError(
            f"{where}: {field_name}[{len(roles) - 1}].role: the conversation ends with {roles[-1]!r}, "
            "not with the assistant (the last turn is what the model learns to answer)"
        )
    return out


def _from_alpaca(rec: dict, where: str) -> list[dict]:
    for key in ("instruction", "output"):
        if key not in rec:
            raise ChatDataError(f"{where}: {key}: missing field (alpaca format: instruction, input, output)")
        if not isinstance(rec[key], str):
            raise ChatDataError(f"{where}: {key}: expected a string")
    inp = rec.get("input") or ""
    if not isinstance(inp, str):
        raise ChatDataError(f"{where}: input: expected a string")
    user = rec["instruction"] + (f"\n\n{inp}" if inp.strip() else "")
    msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": rec["output"]}]
    if rec.get("system"):
        msgs.insert(0, {"role": "system", "content": rec["system"]})
    return msgs


_SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}


def _from_sharegpt(rec: dict, where: str) -> list[dict]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise ChatDataError(f"{where}: conversations: expected a non-empty list")
    msgs = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict):
            raise ChatDataError(f"{where}: conversations[{i}]: expected an object with from and value")
        if "from" not in turn:
            raise ChatDataError(f"{where}: conversations[{i}].from: missing role")
        who = turn["from"]
        if who not in _SHAREGPT_ROLES:
            raise ChatDataError(f"{where}: conversations[{i}].from: unknown role {who!r} (expected human, gpt or system)")
        msgs.append({"role": _SHAREGPT_ROLES[who], "content": turn.get("value")})
    try:
        return validate_messages(msgs, where, "conversations")
    except ChatDataError:
        raise


def _format_task(rec: dict, spec: DatasetSpec, where: str) -> list[dict]:
    tpl = spec.template or ""
    named = TASK_TEMPLATES.get(tpl)
    prompt_t = named["prompt"] if named else tpl
    answer_t = spec.answer or (named["answer"] if named else "{label}")
    if not prompt_t:
        raise ChatDataError(f"{where}: format=task needs a template (one of {sorted(TASK_TEMPLATES)} or a format string)")
    fields = {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in rec.items()}
    try:
        user, answer = prompt_t.format(**fields), answer_t.format(**fields)
    except KeyError as e:
        raise ChatDataError(f"{where}: {e.args[0]}: missing field needed by the task template") from None
    return [{"role": "user", "content": user}, {"role": "assistant", "content": str(answer)}]


def detect_format(rec: dict) -> str:
    if "messages" in rec:
        return "openai"
    if "conversations" in rec:
        return "sharegpt"
    if "instruction" in rec or "output" in rec:
        return "alpaca"
    return "unknown"


def record_to_messages(rec: Any, spec: DatasetSpec, where: str) -> list[dict]:
    if not isinstance(rec, dict):
        raise ChatDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    fmt = spec.format
    if fmt == "auto":
        fmt = detect_format(rec)
        if fmt == "unknown":
            raise ChatDataError(
                f"{where}: cannot tell the format: expected a 'messages' (openai), 'conversations' (sharegpt) "
                f"or 'instruction'/'output' (alpaca) field; keys are {sorted(rec)[:8]}"
            )
    if fmt == "openai":
        msgs = validate_messages(rec.get("messages"), where)
    elif fmt == "alpaca":
        msgs = validate_messages(_from_alpaca(rec, where), where)
    elif fmt == "sharegpt":
        msgs = _from_sharegpt(rec, where)
    elif fmt == "task":
        msgs = validate_messages(_format_task(rec, spec, where), where)
    else:
        raise ValueError(f"{spec.path}: unknown format {spec.format!r} (auto, openai, alpaca, sharegpt, task)")
    if spec.system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": spec.system})
    return msgs


def _reason(err: ChatDataError) -> str:
    """A short reason key for counts: 'messages[].role: unknown role'."""
    text = str(err).split(": ", 1)[-1]
    head, _, rest = text.partition(": ")
    import re

    head = re.sub(r"\[\d+\]", "[]", head)
    rest = re.sub(r"'[^']*'", "'…'", rest).split(" (")[0]
    return f"{head}: {rest}" if rest else head


def read_conversations(spec: DatasetSpec | str, on_error: str = "error") -> tuple[list[Conversation], ReadReport]:
    """All conversations of one source; ``on_error`` is ``error`` (raise) or ``skip`` (count)."""
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    report = ReadReport()
    convs: list[Conversation] = []
    for where, rec in _records(spec.path):
        report.read += 1
        try:
            if isinstance(rec, ChatDataError):
                raise rec
            msgs = record_to_messages(rec, spec, where)
        except ChatDataError as e:
            if on_error == "error":
                raise
            report.skipped[_reason(e)] += 1
            continue
        convs.append(Conversation(msgs, where))
    report.kept = len(convs)
    if report.read == 0:
        raise ChatDataError(f"{spec.path}: no records")
    return convs, report


def _records(path: str) -> Iterator[tuple[str, Any]]:
    if path == BUILTIN_PYTHON_QA:
        for i, rec in enumerate(builtin_python_qa()):
            yield f"{BUILTIN_PYTHON_QA}#{i}", rec
        return
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file (SFT data is .jsonl, .json or {BUILTIN_PYTHON_QA})")
    if p.suffix == ".json":
        raw = p.read_bytes()
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            line = raw.count(b"\n", 0, e.start) + 1
            raise ChatDataError(f"{p}:{line}: not UTF-8 text ({_bad_bytes(e)})") from None
        except json.JSONDecodeError as e:
            raise ChatDataError(f"{p}:{e.lineno}: invalid JSON: {e.msg}") from None
        if not isinstance(data, list):
            raise ChatDataError(f"{p}: expected a JSON list of records")
        for i, rec in enumerate(data):
            yield f"{p}[{i}]", rec
        return
    yield from jsonl_records(p)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """``(file:line, record)`` for each non-blank line of a JSON-lines file. A line that is not
    UTF-8 or not JSON gives a :class:`ChatDataError` naming the file and line in place of its
    record, so a reader raises it or, with ``on_bad_row=skip``, counts it and goes on."""
    p = Path(path)
    with open(p, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{p}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield where, ChatDataError(f"{where}: not UTF-8 text ({_bad_bytes(e)})")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                rec = ChatDataError(f"{where}: invalid JSON: {e.msg} (column {e.colno})")
            yield where, rec


def _bad_bytes(e: UnicodeDecodeError) -> str:
    return f"byte {e.object[e.start : e.start + 1].hex()} at offset {e.start}; save the file as UTF-8"


# ---------------------------------------------------------------------------- builtin data
def _first_paragraph(doc: str) -> str:
    paras = [p.strip() for p in doc.strip().split("\n\n") if p.strip()]
    if not paras:
        return ""
    first = paras[0]
    # a signature line first ("len(obj, /)") is not an answer: take the next paragraph
    if first.endswith(")") and "\n" not in first and len(paras) > 1:
        first = paras[1]
    return " ".join(first.split())


@functools.lru_cache(maxsize=1)
def builtin_python_qa() -> tuple[dict, ...]:
    """``builtin:python-qa``: question/answer pairs made from the documentation that ships with
    CPython (no root, no network): for each public top-level function and class of the stdlib's
    top-level modules, and each module, the question "What does X do?" and the first paragraph of
    its docstring as the answer. Real text; deterministic order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    qa: list[dict] = []
    for path in sorted(stdlib.glob("*.py")):
        mod = path.stem
        if mod.startswith("_") or mod in ("antigravity", "this"):
            continue
        try:
            tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError):  # pragma: no cover
            continue
        items = [(f"the Python module `{mod}`", "What is the Python module `{x}` for?", ast.get_docstring(tree))]
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
                kind = "class" if isinstance(node, ast.ClassDef) else "function"
                items.append((f"{mod}.{node.name}", f"What does the {kind} `{{x}}` do?", ast.get_docstring(node)))
        for name, question, doc in items:
            if not doc:
                continue
            answer = _first_paragraph(doc)
            if not (40 <= len(answer) <= 400) or "->" in answer or answer.startswith(name.split(".")[-1] + "("):
                continue  # too short or long, or a signature rather than an explanation
            x = name if not name.startswith("the Python module") else mod
            qa.append({"instruction": question.format(x=x), "output": answer})
    return tuple(qa)


# --------------------------------------------------------------------------- chat template
def uses_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer starts every text with its BOS token (Llama 1-3, Mistral, Gemma...):
    it has a ``bos_token`` and ``tokenizer("a")`` (special tokens on, as the base model saw its
    pretraining text) begins with it. Decided from what the tokenizer does, not from
    ``add_bos_token`` (a ``tokenizers`` post-processor may add it with that flag off). GPT-2
    style tokenizers and the framework's own BPE tokenizer have a BOS token but do not add it:
    ``False``, and nothing changes for them."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return bool(ids) and ids[0] == bos


def with_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    """``ids`` starting with the BOS token exactly once when the tokenizer uses one (:func:`uses_bos`):
    prepended when missing, left alone when the text (a template's ``{{ bos_token }}``) has it."""
    if uses_bos(tokenizer) and (not ids or ids[0] != tokenizer.bos_token_id):
        return [tokenizer.bos_token_id, *ids]
    return list(ids)


def _special_ids(tokenizer: Any) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}


def _has_markers(tokenizer: Any, tokens: Sequence[str]) -> bool:
    """Every one of ``tokens`` is a special token of the tokenizer that text encodes as itself."""
    vocab, special = tokenizer.get_vocab(), _special_ids(tokenizer)
    return all(t in vocab and vocab[t] in special and tokenizer(t, add_special_tokens=False).input_ids == [vocab[t]] for t in tokens)


def default_chat_template(tokenizer: Any) -> tuple[str, str, list[str]]:
    """The framework default for ``tokenizer``: ``(family, template, tokens to add)``.

    The turn markers the tokenizer already has are reused (:data:`MARKER_TEMPLATES`: the
    framework's, ChatML's ``<|im_start|>``/``<|im_end|>``, Llama 3's headers and ``<|eot_id|>``,
    Gemma's ``<start_of_turn>``/``<end_of_turn>``); only a tokenizer with none of them gets the
    framework's four tokens added. The template starts with ``{{ bos_token }}`` when the
    tokenizer uses a BOS token (:func:`uses_bos`)."""
    bos = "{{ bos_token }}" if uses_bos(tokenizer) else ""
    for family, (tokens, template) in MARKER_TEMPLATES.items():
        if _has_markers(tokenizer, tokens):
            return family, bos + template, []
    vocab = tokenizer.get_vocab()
    return "xiulian", bos + DEFAULT_CHAT_TEMPLATE, [t for t in DEFAULT_CHAT_TOKENS if t not in vocab]


def ensure_chat_template(tokenizer: Any) -> list[str]:
    """Give ``tokenizer`` a chat template if it has none: the framework default
    (:func:`default_chat_template`: its existing turn markers reused, else the framework's role
    and end-of-turn tokens added as special tokens; BOS first when the tokenizer uses one).
    Returns the tokens added (the model's embeddings must then be resized). A tokenizer with its
    own template is left as it is."""
    if getattr(tokenizer, "chat_template", None):
        return []
    family, template, missing = default_chat_template(tokenizer)
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(missing)}, replace_extra_special_tokens=False)
    log.info(
        "chat template: the framework default with %s markers%s%s",
        family,
        f" (added {', '.join(missing)})" if missing else " (the tokenizer's own tokens)",
        ", BOS first" if template.startswith("{{ bos_token }}") else "",
    )
    tokenizer.chat_template = template
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return missing


def read_chat_template(value: str, field_name: str = "data.chat_template") -> str:
    """The Jinja text of a user's template: ``value`` itself when it contains ``{{`` or ``{%``
    (an inline template), else the contents of the file it names."""
    if "{{" in value or "{%" in value:
        return value
    path = Path(value).expanduser()
    if not path.is_file():
        raise ValueError(
            f"{field_name}={value!r}: no such file (expected auto, default, a Jinja file or an inline template containing {{{{ or {{%)"
        )
    return path.read_text(encoding="utf-8")


PROBE_CONVERSATION = [
    {"role": "system", "content": "PROBE_SYSTEM"},
    {"role": "user", "content": "PROBE_QUESTION_1"},
    {"role": "assistant", "content": "PROBE_ANSWER_1"},
    {"role": "user", "content": "PROBE_QUESTION_2"},
    {"role": "assistant", "content": "PROBE_ANSWER_2"},
]


def check_chat_template(tokenizer: Any, where: str = "data.chat_template") -> None:
    """Render a probe conversation with the tokenizer's template and find its assistant spans;
    a template that fails to render, drops a message or hides the answers raises a
    ``ValueError`` naming ``where``."""
    from jinja2 import TemplateError

    try:
        full, spans = assistant_spans(tokenizer, PROBE_CONVERSATION)
        render_text(tokenizer, PROBE_CONVERSATION[:2], add_generation_prompt=True)
    except TemplateError as e:
        raise ValueError(f"{where}: the chat template does not render: {e}") from None
    except ChatDataError as e:
        raise ValueError(f"{where}: {e}") from None
    for m in PROBE_CONVERSATION:
        if m["content"] not in full:
            raise ValueError(f"{where}: the chat template drops the {m['role']} message ({m['content']!r} is not in {full!r})")
    answers = [m["content"] for m in PROBE_CONVERSATION if m["role"] == "assistant"]
    got = [full[s:e] for s, e in spans]
    if len(got) != len(answers) or not all(a in g for a, g in zip(answers, got)):
        raise ValueError(
            f"{where}: the assistant answers cannot be located in the rendering (spans {got!r}, rendered {full!r}); "
            "the template must render each answer after the generation prompt"
        )


def render_text(tokenizer: Any, messages: list[dict], add_generation_prompt: bool = False) -> str:
    """The conversation rendered with the tokenizer's template; when the tokenizer uses a BOS
    token (:func:`uses_bos`) and the template did not put it first, it is put first, so that the
    tokens (encoded with ``add_special_tokens=False``) start with exactly one BOS."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    if uses_bos(tokenizer) and not text.startswith(tokenizer.bos_token):
        text = tokenizer.bos_token + text
    return text


def assistant_spans(tokenizer: Any, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of each assistant turn
    (its content and its end-of-turn marker; not the role marker before it, nor the whitespace
    a template puts after the marker)."""
    full = render_text(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_text(tokenizer, messages[:i], add_generation_prompt=True)
        upto = render_text(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ChatDataError(
                "the chat template does not render a conversation's prefix as a prefix of the whole "
                "(needed to find the assistant tokens); use the framework default template "
                "(data.chat_template=default)"
            )
        end = len(upto.rstrip())
        if end <= len(before):
            end = len(upto)
        spans.append((len(before), end))
    return full, spans


def end_of_turn_token(tokenizer: Any) -> int | None:
    """The id of the token a template puts after an assistant's content (``<|end|>``,
    ``<|im_end|>``, ``<|eot_id|>``...), or ``None`` when it is not a single special token."""
    probe = "PROBE_ANSWER"
    text = render_text(tokenizer, [{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}])
    after = text[text.rindex(probe) + len(probe) :].lstrip()
    if not after:
        return tokenizer.eos_token_id
    ids = tokenizer(after, add_special_tokens=False).input_ids
    return ids[0] if ids and ids[0] in _special_ids(tokenizer) else None


def stop_token_ids(tokenizer: Any) -> list[int]:
    """Generation stops at the end-of-turn token and at eos."""
    ids = []
    for t in (end_of_turn_token(tokenizer) if getattr(tokenizer, "chat_template", None) else None, tokenizer.eos_token_id):
        if t is not None and t not in ids:
            ids.append(t)
    return ids


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    """Aligned with input_ids: ``labels[t]`` is the token after ``input_ids[t]``, or -100."""
    n_assistant: int
    """Assistant tokens before truncation."""
    truncated: bool


def encode_conversation(tokenizer: Any, messages: list[dict], max_tokens: int | None = None) -> Encoded:
    """Tokens of the rendered conversation and next-token labels on the assistant's tokens only.

    ``max_tokens`` bounds the number of input positions (the rendered sequence is cut to
    ``max_tokens + 1`` tokens before shifting)."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    mask = [False] * len(ids)
    j = 0
    for s, e in spans:
        while j < len(ids) and offsets[j][1] <= s:
            j += 1
        k = j
        while k < len(ids) and offsets[k][0] < e:
            a, b = offsets[k]
            if a >= s and b <= e and b > a:
                mask[k] = True
            k += 1
    n_assistant = sum(mask)
    truncated = False
    if max_tokens is not None and len(ids) > max_tokens + 1:
        ids, mask, truncated = ids[: max_tokens + 1], mask[: max_tokens + 1], True
    labels = [ids[t + 1] if mask[t + 1] else IGNORE_INDEX for t in range(len(ids) - 1)]
    return Encoded(ids[:-1], labels, n_assistant, truncated)


# ---------------------------------------------------------------------------------- mixing
def mix(datasets: Sequence[tuple[DatasetSpec, list[Conversation]]], seed: int) -> list[Conversation]:
    """The mixture of one epoch: each dataset's conversations repeated ``weight`` times
    (a fractional part takes a deterministic random subset), FLAN/T5 "examples-proportional
    with a rate" mixing. Order is shuffled later, per epoch."""
    out: list[Conversation] = []
    for spec, convs in datasets:
        if spec.weight < 0:
            raise ValueError(f"{spec.path}: weight must be >= 0, got {spec.weight}")
        whole, frac = int(spec.weight), spec.weight - int(spec.weight)
        out.extend(convs * whole)
        if frac > 0 and convs:
            rng = random.Random(f"{seed}:{spec.path}")
            out.extend(rng.sample(convs, round(frac * len(convs))))
    return out


def split_holdout(convs: list[Conversation], fraction: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """Deterministic train/held-out split by a hash of each conversation's text."""
    if fraction <= 0:
        return convs, []
    train, held = [], []
    for c in convs:
        h = hashlib.sha256(f"{seed}:{json.dumps(c.messages, sort_keys=True)}".encode()).digest()
        (held if int.from_bytes(h[:8], "big") / 2**64 < fraction else train).append(c)
    return train, held


# --------------------------------------------------------------------------------- packing
def pack(examples: Sequence[Encoded], seq_len: int) -> list[list[int]]:
    """Group examples into rows of at most ``seq_len`` tokens: best-fit decreasing (longest
    first, each into the fullest row it still fits in), which fills rows far better than
    packing in arrival order. Returns the example indices of each row; no example is split.
    Deterministic; the caller shuffles the rows."""
    import bisect

    lengths = [len(ex.input_ids) for ex in examples]
    for i, n in enumerate(lengths):
        if n > seq_len:
            raise ValueError(f"example {i} has {n} tokens > seq_len {seq_len} (truncate first)")
    order = sorted(range(len(examples)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (space left, row), sorted
    for i in order:
        n = lengths[i]
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, r = free.pop(k)
            rows[r].append(i)
            space -= n
        else:
            rows.append([i])
            r, space = len(rows) - 1, seq_len - n
        if space > 0:
            bisect.insort(free, (space, r))
    return rows


def collate_rows(examples: Sequence[Encoded], rows: Sequence[Sequence[int]], pad_id: int, packed: bool, length: int) -> dict:
    """Tensors for a micro-batch of rows, padded to ``length``.

    Packed rows get ``position_ids`` that restart at 0 for every example; with no
    ``attention_mask``, transformers turns restarting positions into a block-diagonal causal
    mask (no attention across examples). Padding is one more "example" that carries no loss.
    Unpacked rows (one example each) get an ``attention_mask`` for the right padding instead.
    """
    import torch

    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
    pos = torch.zeros((len(rows), length), dtype=torch.long)
    att = torch.zeros((len(rows), length), dtype=torch.long)
    for r, row in enumerate(rows):
        t = 0
        for i in row:
            ex = examples[i]
            n = len(ex.input_ids)
            ids[r, t : t + n] = torch.tensor(ex.input_ids)
            labels[r, t : t + n] = torch.tensor(ex.labels)
            pos[r, t : t + n] = torch.arange(n)
            att[r, t : t + n] = 1
            t += n
        if t < length:
            pos[r, t:] = torch.arange(length - t)
    if packed:
        return {"input_ids": ids, "labels": labels, "position_ids": pos}
    return {"input_ids": ids, "labels": labels, "attention_mask": att}


def iter_chunks(seq: Sequence[Any], n: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
