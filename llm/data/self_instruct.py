"""Self-Instruct: grow an instruction-tuning (SFT) set from a few seed tasks with a teacher model.

After Wang et al. 2022, "Self-Instruct: Aligning Language Models with Self-Generated
Instructions" (arXiv:2212.10560). Each round makes three kinds of request to a *teacher*:

1. **propose** - show ``--num-examples`` instructions sampled from the seed tasks (and, as in
   the paper, up to 2 already generated ones) and ask for ``--per-prompt`` new task
   instructions as a numbered list, which is parsed (``parse_numbered_list``);
2. **input** - for each new instruction, ask for an input to apply it to, or ``<noinput>``
   when the instruction is self-contained; two seed tasks (one with an input, one without)
   go first as earlier chat turns, the paper's in-context instances (``parse_input`` reads
   the reply: "None", "N/A", "does not require an input" also mean no input, and an
   ``Output:``/``Answer:`` section after the input is cut off);
3. **answer** - ask the teacher the user turn itself (instruction + input) and keep its reply.

Rounds go on until ``--num-tasks`` items are kept, or ``--patience`` rounds in a row keep
nothing new, or ``--max-rounds`` is reached. Each round sends ``--batch`` proposal prompts;
a local teacher generates ``--batch`` replies at a time, an HTTP teacher sends up to
``--batch`` requests at once.

The teacher is a local chat model (a Hugging Face model directory, or a ``.gguf`` file that
``llm.model.build.resolve_pretrained`` converts once into ``$XIULIAN_CACHE/models``) run with
batched sampling, or any OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp server,
TGI, Ollama, OpenAI ...) given by URL. Both sit behind the ``Teacher`` protocol:
``complete(list of message lists) -> list of replies``.

Usage::

    # a local teacher (the tokenizer must carry a chat template)
    python -m llm.data.self_instruct --teacher path/to/SmolLM2-135M-Instruct.Q4_1.gguf \\
        --seed-tasks seeds.jsonl --out data/self_instruct.jsonl --num-tasks 200 --batch 8

    # an OpenAI-compatible server; the key is read from the variable named by --api-key-env
    python -m llm.data.self_instruct --teacher http://localhost:8000/v1 --model-name Qwen/Qwen2.5-7B-Instruct \\
        --api-key-env OPENAI_API_KEY --seed-tasks seeds.txt --out data/si.jsonl --num-tasks 5000

``--trace FILE`` writes every request and reply (jsonl), for tuning prompts and filters;
``--threads N`` sets torch's CPU threads (on a small shared CPU machine, 1 can be several
times faster than the default).

Seed tasks: JSON lines with ``instruction`` (and optional ``input``, ``output``; the original
``seed_tasks.jsonl`` with ``instances`` also works), or a plain text file with one
instruction per line (blank lines and lines starting with ``#`` are skipped). Seed
instructions are the in-context examples of the proposals, and seed inputs those of the input
requests; the seed outputs are not used, and the seeds are not written to the output.

Output: ``OUT`` gets one SFT record per line::

    {"messages": [{"role": "user", "content": "<instruction>\\n\\n<input>"},
                  {"role": "assistant", "content": "<answer>"}], "source": "self-instruct"}

(no blank line and no input part when the input is empty), and ``OUT.report.json`` (``OUT``
with its suffix replaced by ``.report.json``) gets the counts per stage and per drop reason.
Both are written atomically (temp file + ``os.replace``); Ctrl-C writes what was kept so far
and marks the report ``"interrupted": true``.

Filters (every drop is counted under its reason in the report's ``dropped``):

* ``instruction/truncated`` - the last list item of a reply cut off by ``--max-new-tokens``;
* ``instruction/empty``, ``instruction/not_text`` (under 95 % printable characters, or under
  30 % letters), ``instruction/too_short`` (< 3 words), ``instruction/too_long`` (> 150 words),
  ``instruction/starts_with_punctuation``;
* ``instruction/unsupported`` - mentions what a text model cannot see or produce, with the
  paper's keyword list (image, graph, picture, file, map, draw, plot, go to, video, audio,
  music, flowchart, diagram and their plurals; whole words, so it also drops "the plot of
  a novel", as the paper's did);
* ``instruction/write_a_program`` - starts with "Write a program" (ambiguous: the program or
  its output?), as in the paper;
* ``instruction/duplicate_of_seed``, ``instruction/duplicate`` - ROUGE-L F1 >= 0.7
  (``--similarity``) with a seed instruction, or with an instruction already accepted
  (earlier rounds, or earlier in this round). ROUGE-L is computed here on lower-cased words;
  CJK (Han, kana, Hangul) text is compared character by character;
* ``input/truncated`` (kept with ``--keep-truncated``), ``input/not_text``,
  ``input/repeats_instruction`` (ROUGE-L >= 0.8 with the instruction);
* ``answer/empty``, ``answer/truncated`` (kept with ``--keep-truncated``), ``answer/not_text``,
  ``answer/repeats_instruction`` (ROUGE-L >= 0.8 with the instruction),
  ``answer/repeats_input`` (the same words as the input, as the paper filtered),
  ``answer/refusal`` ("As an AI ...", "I'm sorry, but I can't ...").

Accepted instructions beyond what is still needed this round are not answered; they are
counted as ``surplus`` (not a drop, and they do not block later proposals). Everything that
is random (example sampling, local sampling) is seeded by ``--seed``; an HTTP teacher's own
sampling is up to the server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import random
import re
import sys
import tempfile
import threading
import time
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Completion",
    "DedupIndex",
    "FilterConfig",
    "HTTPTeacher",
    "Item",
    "LocalTeacher",
    "Message",
    "SeedTask",
    "SelfInstructResult",
    "Teacher",
    "TeacherError",
    "answer_drop_reason",
    "clean_answer",
    "input_demos",
    "input_drop_reason",
    "input_messages",
    "instruction_drop_reason",
    "lcs_length",
    "load_seed_tasks",
    "main",
    "make_teacher",
    "parse_input",
    "parse_numbered_list",
    "propose_messages",
    "report_path",
    "rouge_l",
    "run_self_instruct",
    "sft_record",
    "tokenize",
    "user_content",
    "write_outputs",
]

log = logging.getLogger("llm.data.self_instruct")

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}

SOURCE = "self-instruct"
NOINPUT = "<noinput>"


# --------------------------------------------------------------------------------------------
# Teachers
# --------------------------------------------------------------------------------------------


class Completion(str):
    """A teacher reply: a ``str`` that also says whether the length limit cut it off."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> Self:
        obj = super().__new__(cls, text)
        obj.truncated = truncated
        return obj


def is_truncated(text: str) -> bool:
    return bool(getattr(text, "truncated", False))


@runtime_checkable
class Teacher(Protocol):
    """Anything that answers chat conversations, one reply per conversation, in order.

    Replies may be ``Completion`` objects; a plain ``str`` counts as not truncated.
    """

    name: str

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]: ...


class TeacherError(RuntimeError):
    """The teacher cannot be used (bad endpoint, authentication, model without a chat template)."""


def chat_completions_url(url: str) -> str:
    """The chat-completions URL for a base URL (``http://host:port/v1``), a bare host
    (``http://host:port``) or the full ``.../chat/completions`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class HTTPTeacher:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, called with ``urllib``.

    Requests run ``concurrency`` at a time; replies come back in request order. 429, 5xx,
    connection errors and timeouts are retried ``retries`` times with exponential backoff
    (``backoff * 2**attempt`` seconds up to 60, or the server's ``Retry-After`` up to 60 s);
    any other HTTP status raises ``TeacherError`` naming the URL and the status.
    """

    def __init__(
        self,
        url: str,
        model: str = "default",
        *,
        temperature: float = 0.7,
        max_tokens: int = 512,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 1.0,
        concurrency: int = 4,
    ) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.name = f"{self.url} (model {model})"
        self.requests = 0  # HTTP attempts made, retries included
        self._lock = threading.Lock()

    def payload(self, messages: Sequence[Message]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
        }

    def _post(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            with self._lock:
                self.requests += 1
            delay = min(60.0, self.backoff * 2**attempt)
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise TeacherError(f"{self.url}: the reply is not JSON ({e}): {raw[:300]!r}") from None
            except urllib.error.HTTPError as e:
                detail = _error_body(e)
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code} {e.reason}{detail}"
                    retry_after = _retry_after(e)
                    if retry_after is not None:
                        delay = retry_after
                else:
                    hint = ""
                    if e.code in (401, 403) and self.api_key:
                        hint = " (the API key from --api-key-env was refused)"
                    elif e.code in (401, 403):
                        hint = " (no API key was sent: set --api-key-env to the name of the environment variable holding it)"
                    elif e.code == 404:
                        hint = " (check the URL, and --model-name against the server's /v1/models)"
                    raise TeacherError(f"{self.url}: HTTP {e.code} {e.reason}{detail}{hint}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = f"connection error: {reason}"
            if attempt < self.retries:
                log.warning("%s: %s; retry %d/%d in %.1fs", self.url, last, attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise TeacherError(f"{self.url}: giving up after {self.retries + 1} attempts; last: {last}")

    def complete_one(self, messages: Sequence[Message]) -> Completion:
        data = self._post(json.dumps(self.payload(messages)).encode("utf-8"))
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(
                f"{self.url}: no choices[0].message.content in the reply: {json.dumps(data)[:300]}"
            ) from None
        return Completion(content or "", truncated=choice.get("finish_reason") == "length")

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self.complete_one(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self.complete_one, conversations))


def _error_body(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - the body is only a detail of the message
        return ""
    return f": {text[:300]}" if text else ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 60 else None


# token strings that end an assistant turn in common chat templates
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "</s>")


class LocalTeacher:
    """A local chat model: batched ``generate`` with left padding, KV cache and sampling.

    ``path`` is a Hugging Face model directory or a ``.gguf`` file. The tokenizer must carry a
    chat template. Generation stops at the tokenizer's eos and the end-of-turn tokens of
    common templates (``<|im_end|>``, ``<|eot_id|>``, ...) that the vocabulary has.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.model.build import resolve_pretrained

        model_dir = resolve_pretrained(path)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not getattr(tok, "chat_template", None):
            raise TeacherError(
                f"{path}: the tokenizer has no chat_template; the teacher must be a chat "
                "(instruction-tuned) model whose tokenizer carries a chat template"
            )
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        if tok.pad_token_id is None:
            raise TeacherError(f"{path}: the tokenizer has no eos, pad or unk token to pad a batch with")
        self.tokenizer = tok
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device).eval()
        vocab = tok.get_vocab()
        eos: set[int] = set()
        if tok.eos_token_id is not None:
            eos.add(int(tok.eos_token_id))
        gen_eos = getattr(self.model.generation_config, "eos_token_id", None)
        if gen_eos is not None:
            eos.update(int(i) for i in (gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]))
        eos.update(vocab[t] for t in END_OF_TURN_TOKENS if t in vocab)
        if not eos:
            raise TeacherError(f"{path}: no eos or end-of-turn token to stop generation at")
        self.eos_ids = sorted(eos)
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.name = f"{path}"
        self.model_dir = model_dir
        self.generated_tokens = 0
        torch.manual_seed(seed)

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(conversations), self.batch_size):
            out.extend(self._complete_batch(conversations[i : i + self.batch_size]))
        return out

    def _complete_batch(self, conversations: Sequence[Sequence[Message]]) -> list[Completion]:
        import torch

        tok = self.tokenizer
        texts = [tok.apply_chat_template(list(c), add_generation_prompt=True, tokenize=False) for c in conversations]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "use_cache": True,
            "eos_token_id": self.eos_ids,
            "pad_token_id": tok.pad_token_id,
        }
        if self.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=None)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :]
        eos = torch.tensor(self.eos_ids, device=new.device)
        results = []
        for row in new:
            hit = torch.isin(row, eos).nonzero()
            end = int(hit[0, 0]) if len(hit) else row.shape[0]
            self.generated_tokens += end
            text = tok.decode(row[:end], skip_special_tokens=True)
            results.append(Completion(text, truncated=not len(hit)))
        return results


def make_teacher(
    spec: str,
    *,
    model_name: str | None = None,
    api_key_env: str | None = None,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_new_tokens: int = 512,
    batch: int = 8,
    seed: int = 0,
    timeout: float = 120.0,
    retries: int = 5,
    num_threads: int | None = None,
) -> Teacher:
    """An ``HTTPTeacher`` for an http(s) URL, else a ``LocalTeacher`` for a directory / .gguf."""
    if spec.startswith(("http://", "https://")):
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise TeacherError(f"--api-key-env {api_key_env}: the environment variable is unset or empty")
        return HTTPTeacher(
            spec,
            model_name or "default",
            temperature=temperature,
            max_tokens=max_new_tokens,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            concurrency=batch,
        )
    return LocalTeacher(
        spec,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch,
        seed=seed,
        num_threads=num_threads,
    )


# --------------------------------------------------------------------------------------------
# ROUGE-L
# --------------------------------------------------------------------------------------------

# Han (with extension A and compatibility ideographs), hiragana/katakana, Hangul syllables
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_TOKEN_RE = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (runs of letters and digits); each CJK character is a token of its own."""
    return _TOKEN_RE.findall(text.lower())


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a) * len(b)))."""
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f1_from_tokens(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    lcs = lcs_length(a, b)
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 of two texts: LCS over ``tokenize`` tokens; P = LCS/|cand|, R = LCS/|ref|.

    Symmetric. 0.0 when either text has no tokens.
    """
    return _f1_from_tokens(tokenize(candidate), tokenize(reference))


class DedupIndex:
    """Texts to compare new ones against by ROUGE-L.

    Pairs that cannot reach the score sought are skipped with a cheap upper bound on the LCS:
    a token of one text that the other lacks is not in their LCS, so with ``u`` distinct
    tokens in common, LCS <= min(m - |set_a| + u, n - |set_b| + u) for lengths m and n. Most
    unrelated pairs cost one set intersection instead of the O(m * n) dynamic programme.
    """

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._entries: list[tuple[tuple[str, ...], frozenset[str]]] = []
        self.texts: list[str] = []
        for t in texts:
            self.add(t)

    def __len__(self) -> int:
        return len(self.texts)

    def add(self, text: str) -> None:
        toks = tuple(tokenize(text))
        self.texts.append(text)
        self._entries.append((toks, frozenset(toks)))

    def most_similar(self, text: str, threshold: float = 0.0) -> tuple[float, str | None]:
        """The most similar indexed text and its ROUGE-L F1.

        With ``threshold`` > 0 the search stops at the first text scoring >= threshold and
        skips texts that cannot reach it, so a score below the threshold is only a lower
        bound of the best one (enough to say "no near-duplicate").
        """
        toks = tuple(tokenize(text))
        n = len(toks)
        if not n:
            return 0.0, None
        token_set = frozenset(toks)
        best, best_text = 0.0, None
        for (other, other_set), other_text in zip(self._entries, self.texts):
            m = len(other)
            if not m:
                continue
            common = len(token_set & other_set)
            bound = 2 * min(n - len(token_set) + common, m - len(other_set) + common) / (n + m)
            if bound <= best or bound < threshold:
                continue
            score = _f1_from_tokens(toks, other)
            if score > best:
                best, best_text = score, other_text
                if threshold > 0 and best >= threshold:
                    break
        return best, best_text


# --------------------------------------------------------------------------------------------
# Parsing and filters
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


UNSUPPORTED_WORDS = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
_UNSUPPORTED_RE = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in UNSUPPORTED_WORDS) + r")\b", re.IGNORECASE)
_REFUSAL_RE = re.compile(
    r"^\W*(?:as an ai\b|as a language model|i(?:'m| am) (?:sorry|unable|not able)|sorry,? (?:but )?i|"
    r"i (?:cannot|can't|can not|won't) (?:help|assist|provide|answer|do|complete|fulfil|fulfill))",
    re.IGNORECASE,
)


@dataclass
class FilterConfig:
    """Thresholds of the filters (defaults follow the paper where it gives one)."""

    min_words: int = 3
    max_words: int = 150
    similarity: float = 0.7  # ROUGE-L F1 at or above which an instruction is a near-duplicate
    answer_repeat_similarity: float = 0.8  # ROUGE-L F1 of answer vs instruction
    min_printable: float = 0.95
    min_letters: float = 0.3
    keep_truncated: bool = False


def _is_text(text: str, cfg: FilterConfig) -> bool:
    if not text:
        return False
    printable = sum(1 for c in text if (c.isprintable() or c in "\n\t") and c != "\ufffd")
    if printable / len(text) < cfg.min_printable:
        return False
    visible = [c for c in text if not c.isspace()]
    if not visible:
        return False
    letters = sum(1 for c in visible if c.isalpha())
    return letters / len(visible) >= cfg.min_letters


def instruction_drop_reason(instruction: str, cfg: FilterConfig | None = None) -> str | None:
    """Why an instruction is malformed or unsuitable, or ``None`` to keep it (duplicates are
    checked separately)."""
    cfg = cfg or FilterConfig()
    if not instruction.strip():
        return "empty"
    if not _is_text(instruction, cfg):
        return "not_text"
    n = len(tokenize(instruction))
    if n < cfg.min_words:
        return "too_short"
    if n > cfg.max_words:
        return "too_long"
    first = instruction.lstrip()[0]
    if unicodedata.category(first).startswith("P") and first not in "\"'“‘([¿¡«「『":
        return "starts_with_punctuation"
    if _UNSUPPORTED_RE.search(instruction):
        return "unsupported"
    if instruction.lower().lstrip().startswith("write a program"):
        return "write_a_program"
    return None


def input_drop_reason(
    instruction: str, inp: str, truncated: bool = False, cfg: FilterConfig | None = None
) -> str | None:
    """Why an input (already parsed, ``""`` for none) is unusable, or ``None``."""
    cfg = cfg or FilterConfig()
    if truncated and not cfg.keep_truncated:
        return "truncated"
    if not inp:
        return None
    if not _is_text(inp, FilterConfig(min_printable=cfg.min_printable, min_letters=0.0)):
        return "not_text"
    if rouge_l(inp, instruction) >= cfg.answer_repeat_similarity:
        return "repeats_instruction"
    return None


def answer_drop_reason(
    instruction: str, answer: str, truncated: bool = False, cfg: FilterConfig | None = None, *, inp: str = ""
) -> str | None:
    """Why an answer (to ``instruction`` with input ``inp``) is unusable, or ``None``."""
    cfg = cfg or FilterConfig()
    if not answer.strip():
        return "empty"
    if truncated and not cfg.keep_truncated:
        return "truncated"
    if not _is_text(answer, FilterConfig(min_printable=cfg.min_printable, min_letters=0.0)):
        return "not_text"
    if rouge_l(answer, instruction) >= cfg.answer_repeat_similarity:
        return "repeats_instruction"
    if inp and tokenize(answer) == tokenize(inp):
        return "repeats_input"
    if _REFUSAL_RE.match(answer):
        return "refusal"
    return None


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
# Pipeline
# --------------------------------------------------------------------------------------------


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
    drops = ", ".join(
        f"{stage}/{reason}={n}" for stage, reasons in report["dropped"].items() for reason, n in reasons.items()
    )
    req = sum(report["requests"].values())
    return (
        f"self-instruct: kept {report['kept']}/{report['num_tasks']} tasks in {report['rounds']} round(s), "
        f"{req} teacher requests, {report['dropped_total']} dropped" + (f" ({drops})" if drops else "")
        + f", stop: {report['stop_reason']}, {report['elapsed_s']:.1f}s -> {out}"
    )


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m llm.data.self_instruct",
        description="Self-Instruct (Wang et al. 2022): generate SFT data from seed tasks with a teacher model.",
    )
    p.add_argument("--teacher", required=True, help="model directory, .gguf file, or OpenAI-compatible URL (http://host:port/v1)")
    p.add_argument("--seed-tasks", required=True, help="seed tasks: jsonl with 'instruction' (+ 'input', 'output') or text, one per line")
    p.add_argument("--out", required=True, help="output .jsonl (the report goes to OUT.report.json)")
    p.add_argument("--num-tasks", type=int, default=100, help="items to generate (default 100)")
    p.add_argument("--batch", type=int, default=8, help="propose prompts per round; local: generation batch size; HTTP: concurrent requests (default 8)")
    p.add_argument("--per-prompt", type=int, default=8, help="new instructions asked for per propose prompt (default 8)")
    p.add_argument("--num-examples", type=int, default=8, help="in-context example instructions per propose prompt (default 8, up to 2 generated)")
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
            trace = None
            if args.trace:
                Path(args.trace).parent.mkdir(parents=True, exist_ok=True)
                trace_file = stack.enter_context(open(args.trace, "w", encoding="utf-8"))

                def trace(event: dict[str, Any]) -> None:
                    trace_file.write(json.dumps(event, ensure_ascii=False) + "\n")
                    trace_file.flush()

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


if __name__ == "__main__":
    sys.exit(main())
