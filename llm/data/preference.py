"""Preference data (reward model, DPO) and prompts (PPO).

Preference records, one per line of a ``.jsonl`` file:

* a pair   ``{"prompt": ..., "chosen": "...", "rejected": "...", "margin": 1.0 (optional)}``
* a ranking ``{"prompt": ..., "responses": ["best", "second", ..., "worst"]}``: K answers give all
  K*(K-1)/2 pairs (InstructGPT), kept together: every pair of one prompt lands on the same side
  of the train/held-out split. ``python -m llm.rank`` writes this form.

``prompt`` is a user message (a string) or a conversation (OpenAI-style messages, ending with a
user turn); ``chosen``/``rejected``/responses are the assistant's answer (a string, or TRL's
conversational form ``[{"role": "assistant", "content": ...}]``).

Bad rows raise :class:`ChatDataError` naming ``file:line`` and the field, or are counted by
reason with ``on_error=skip``: a missing prompt, chosen or rejected; an empty answer; chosen
identical to rejected. A pair whose prompt leaves no room for the answer within ``seq_len`` is
counted (``prompt_too_long``) or, with ``on_truncated=error``, stops the run.

Unpaired (KTO, ``stage.dpo.loss=kto``), one answer with a thumbs-up or -down:

* ``{"prompt": ..., "completion": "...", "label": true}`` (``prompt`` as above, ``completion`` an
  answer as above, ``label`` true = desirable, false = undesirable; TRL's unpaired form), or
* ``{"messages": [... ending with the assistant's answer], "label": false}``.

Under KTO a pair counts as one desirable (chosen) and one undesirable (rejected) example, a
ranking as its best (desirable) and its worst (undesirable) answer, so paired files and the
built-in pairs train KTO too; outside KTO an unpaired record is an error.

Built in, needing no download: ``builtin:python-qa-pairs`` -- the question/answer pairs made
from CPython's documentation (``builtin:python-qa``) with the real answer chosen and the answer
to a different question rejected (a known better answer, not a human ranking).

Prompts for PPO: ``{"prompt": ...}`` records, or any SFT conversation source (the conversation
without its last assistant turn is the prompt), e.g. ``builtin:python-qa``.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from llm.data.chat import (
    IGNORE_INDEX,
    ChatDataError,
    DatasetSpec,
    ReadReport,
    _reason,
    _records,
    builtin_python_qa,
    encode_conversation,
    read_conversations,
    render_text,
    validate_messages,
)
from llm.data.steps import StepDataModule, source_file, stack_micro, warn_truncated

BUILTIN_PYTHON_QA_PAIRS = "builtin:python-qa-pairs"
BUILTIN_PYTHON_QA_SCRAMBLED = "builtin:python-qa-scrambled"


@dataclass
class PreferencePair:
    prompt: list[dict]
    """The conversation before the answer (ends with a user turn)."""
    chosen: str
    rejected: str
    margin: float = 0.0
    group: str = ""
    """Pairs of one prompt share a group: they are split (train/held-out) together."""
    origin: str = ""


# ------------------------------------------------------------------------------- reading
def _prompt_messages(value: Any, where: str) -> list[dict]:
    if value is None:
        raise ChatDataError(f"{where}: prompt: missing")
    if isinstance(value, str):
        if not value.strip():
            raise ChatDataError(f"{where}: prompt: empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ChatDataError(f"{where}: prompt: expected a string or a non-empty list of messages")
    # checked as a conversation with a placeholder answer appended (roles, content, order)
    out = validate_messages(list(value) + [{"role": "assistant", "content": "x"}], where, "prompt")[:-1]
    if out[-1]["role"] != "user":
        raise ChatDataError(f"{where}: prompt: must end with a user turn")
    return out


def _answer(value: Any, where: str, field: str) -> str:
    if value is None:
        raise ChatDataError(f"{where}: {field}: missing (a pair needs prompt, chosen and rejected; a ranking needs prompt and responses)")
    if isinstance(value, list):  # TRL's conversational form
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise ChatDataError(f"{where}: {field}: expected a string or [{{'role': 'assistant', 'content': ...}}]")
        value = value[0].get("content")
    if not isinstance(value, str):
        raise ChatDataError(f"{where}: {field}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise ChatDataError(f"{where}: {field}: empty")
    return value


def _group_key(prompt: list[dict]) -> str:
    return hashlib.sha256(json.dumps(prompt, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def record_to_pairs(rec: Any, where: str) -> list[PreferencePair]:
    if not isinstance(rec, dict):
        raise ChatDataError(f"{where}: expected a JSON object")
    if "label" in rec and "chosen" not in rec and "responses" not in rec:
        raise ChatDataError(f"{where}: label: an unpaired (KTO) record; train it with stage.dpo.loss=kto")
    prompt = _prompt_messages(rec.get("prompt"), where)
    group = _group_key(prompt)
    if "responses" in rec:
        resp = rec["responses"]
        if not isinstance(resp, list) or len(resp) < 2:
            raise ChatDataError(f"{where}: responses: expected a list of at least 2 answers, best first")
        answers = [_answer(r, where, f"responses[{i}]") for i, r in enumerate(resp)]
        if len(set(answers)) != len(answers):
            raise ChatDataError(f"{where}: responses: identical answers in one ranking")
        return [
            PreferencePair(prompt, answers[i], answers[j], 0.0, group, where)
            for i in range(len(answers))
            for j in range(i + 1, len(answers))
        ]
    chosen = _answer(rec.get("chosen"), where, "chosen")
    rejected = _answer(rec.get("rejected"), where, "rejected")
    if chosen.strip() == rejected.strip():
        raise ChatDataError(f"{where}: chosen: identical to rejected")
    margin = rec.get("margin", 0.0)
    if not isinstance(margin, (int, float)):
        raise ChatDataError(f"{where}: margin: expected a number")
    return [PreferencePair(prompt, chosen, rejected, float(margin), group, where)]


@dataclass
class KTOExample:
    """One answer with a thumbs-up (``desirable``) or -down, for KTO."""

    prompt: list[dict]
    completion: str
    desirable: bool
    group: str = ""
    """Examples of one prompt share a group: they are split (train/held-out) together, and never
    mismatched with each other for KTO's reference point."""
    origin: str = ""


def record_to_kto(rec: Any, where: str) -> list[KTOExample]:
    """An unpaired record gives one example, a pair two (chosen desirable, rejected undesirable),
    a ranking two (its best desirable, its worst undesirable)."""
    if not isinstance(rec, dict):
        raise ChatDataError(f"{where}: expected a JSON object")
    if "label" not in rec:
        if "chosen" in rec or "responses" in rec:
            pairs = record_to_pairs(rec, where)
            best, worst = pairs[0].chosen, pairs[-1].rejected  # a ranking's first pair is (1st, 2nd), its last (K-1th, Kth)
            p = pairs[0]
            return [KTOExample(p.prompt, best, True, p.group, where), KTOExample(p.prompt, worst, False, p.group, where)]
        raise ChatDataError(
            f"{where}: label: missing (an unpaired KTO record needs prompt, completion and label; a pair chosen and rejected)"
        )
    label = rec["label"]
    if not isinstance(label, bool):
        raise ChatDataError(f"{where}: label: expected true (desirable) or false (undesirable), got {label!r}")
    if "messages" in rec:
        if "prompt" in rec or "completion" in rec:
            raise ChatDataError(f"{where}: messages: give either messages or prompt and completion, not both")
        msgs = validate_messages(rec["messages"], where)
        if msgs[-1]["role"] != "assistant":
            raise ChatDataError(f"{where}: messages: must end with the assistant's answer")
        prompt, completion = msgs[:-1], msgs[-1]["content"]
        if prompt[-1]["role"] != "user":
            raise ChatDataError(f"{where}: messages: the answer must follow a user turn")
    else:
        prompt = _prompt_messages(rec.get("prompt"), where)
        if rec.get("completion") is None:
            raise ChatDataError(f"{where}: completion: missing (an unpaired KTO record needs prompt, completion and label)")
        completion = _answer(rec.get("completion"), where, "completion")
    return [KTOExample(prompt, completion, label, _group_key(prompt), where)]


def read_kto(path: str, on_error: str = "error", seed: int = 0) -> tuple[list[KTOExample], ReadReport]:
    """All KTO examples of one source (unpaired records, pairs, rankings, the built-in pairs);
    ``on_error``: ``error`` (raise) or ``skip`` (count by reason)."""
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    report = ReadReport()
    out: list[KTOExample] = []
    for where, rec in _preference_records(path, seed):
        report.read += 1
        try:
            if isinstance(rec, ChatDataError):
                raise rec
            got = record_to_kto(rec, where)
        except ChatDataError as e:
            if on_error == "error":
                raise
            report.skipped[_reason(e)] += 1
            continue
        out.extend(got)
        report.kept += 1
    if report.read == 0:
        raise ChatDataError(f"{path}: no records")
    return out, report


def mismatched_partners(groups: Sequence[str], seed: int) -> list[int]:
    """For KTO's reference point: for each example the index of another whose prompt differs (the
    completion it is paired with to estimate KL(policy || reference) from mismatched pairs, as in
    the KTO paper and TRL). A seeded random order, each example taking the next one in it (the
    one after if that shares its prompt): a fixed pairing, as TRL's, so precomputed reference
    log-probs cover it. An example whose every other shares its prompt raises."""
    n = len(groups)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out = [0] * n
    for k, i in enumerate(order):
        for step in range(1, n):
            j = order[(k + step) % n]
            if groups[j] != groups[i]:
                out[i] = j
                break
        else:
            raise ChatDataError("KTO data: its reference point needs answers to at least two different prompts")
    return out


def builtin_python_qa_pairs(seed: int = 0) -> list[dict]:
    """Real answers chosen, a mismatched real answer (another question's) rejected."""
    qa = builtin_python_qa()
    order = list(range(len(qa)))
    random.Random(seed).shuffle(order)
    other = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}  # a derangement
    out = []
    for i, r in enumerate(qa):
        prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
        rejected = qa[other[i]]["output"]
        if rejected.strip() != r["output"].strip():
            out.append({"prompt": prompt, "chosen": r["output"], "rejected": rejected})
    return out


def builtin_python_qa_scrambled(seed: int = 0) -> list[dict]:
    """Real answers chosen, the same answer with its words in random order rejected."""
    out = []
    for i, r in enumerate(builtin_python_qa()):
        words = r["output"].split()
        rng = random.Random(f"{seed}:{i}")
        shuffled = words[:]
        for _ in range(5):
            rng.shuffle(shuffled)
            if shuffled != words:
                break
        if shuffled != words:
            prompt = r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")
            out.append({"prompt": prompt, "chosen": r["output"], "rejected": " ".join(shuffled)})
    return out


def _preference_records(path: str, seed: int) -> Iterator[tuple[str, Any]]:
    builtins = {BUILTIN_PYTHON_QA_PAIRS: builtin_python_qa_pairs, BUILTIN_PYTHON_QA_SCRAMBLED: builtin_python_qa_scrambled}
    if path in builtins:
        for i, rec in enumerate(builtins[path](seed)):
            yield f"{path}#{i}", rec
        return
    yield from _records(path)


def read_preferences(path: str, on_error: str = "error", seed: int = 0) -> tuple[list[PreferencePair], ReadReport]:
    """All pairs of one source; ``on_error``: ``error`` (raise) or ``skip`` (count by reason)."""
    if on_error not in ("error", "skip"):
        raise ValueError(f"on_error must be 'error' or 'skip', got {on_error!r}")
    report = ReadReport()
    pairs: list[PreferencePair] = []
    for where, rec in _preference_records(path, seed):
        report.read += 1
        try:
            if isinstance(rec, ChatDataError):
                raise rec
            got = record_to_pairs(rec, where)
        except ChatDataError as e:
            if on_error == "error":
                raise
            report.skipped[_reason(e)] += 1
            continue
        pairs.extend(got)
        report.kept += 1
    if report.read == 0:
        raise ChatDataError(f"{path}: no records")
    return pairs, report


def split_pairs(pairs: Sequence[PreferencePair], fraction: float, seed: int) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Held-out split by prompt group (all pairs of one prompt on the same side)."""
    if fraction <= 0:
        return list(pairs), []
    train, held = [], []
    for p in pairs:
        h = hashlib.sha256(f"{seed}:{p.group}".encode()).digest()
        (held if int.from_bytes(h[:8], "big") / 2**64 < fraction else train).append(p)
    return train, held


def read_prompts(spec: DatasetSpec | str, on_error: str = "error") -> tuple[list[list[dict]], ReadReport]:
    """Prompts for PPO: ``{"prompt": ...}`` records, or any conversation source (the messages
    before the last assistant turn)."""
    if isinstance(spec, str):
        spec = DatasetSpec(path=spec)
    records = list(_records(spec.path)) if not spec.path.startswith("builtin:") else []
    if records and isinstance(records[0][1], dict) and "prompt" in records[0][1]:
        report = ReadReport()
        out = []
        for where, rec in records:
            report.read += 1
            try:
                if isinstance(rec, ChatDataError):
                    raise rec
                if not isinstance(rec, dict):
                    raise ChatDataError(f"{where}: expected a JSON object")
                out.append(_prompt_messages(rec.get("prompt"), where))
            except ChatDataError as e:
                if on_error == "error":
                    raise
                report.skipped[_reason(e)] += 1
        report.kept = len(out)
        return out, report
    convs, report = read_conversations(spec, on_error)
    prompts = []
    for c in convs:
        last_user = max(i for i, m in enumerate(c.messages) if m["role"] == "user")
        prompts.append(c.messages[: last_user + 1])
    return prompts, report


# ------------------------------------------------------------------------------ encoding
@dataclass
class EncodedAnswer:
    ids: list[int]
    """The rendered conversation up to and including the answer's last token (its end-of-turn
    token when not truncated): the reward model reads its score at ``ids[-1]``."""
    labels: list[int]
    """``len(ids) - 1`` next-token labels, the answer's tokens only (DPO's sequence log-prob)."""
    truncated: bool


def encode_answer(tokenizer: Any, prompt: list[dict], answer: str, max_tokens: int) -> EncodedAnswer | None:
    """``None`` when the prompt leaves no answer token within ``max_tokens`` tokens."""
    enc = encode_conversation(tokenizer, prompt + [{"role": "assistant", "content": answer}], max_tokens=max_tokens - 1)
    last = max((t for t, lab in enumerate(enc.labels) if lab != IGNORE_INDEX), default=None)
    if last is None:
        return None
    ids = enc.input_ids[: last + 1] + [enc.labels[last]]
    return EncodedAnswer(ids, enc.labels[: last + 1], enc.truncated)


def encode_prompt(tokenizer: Any, prompt: list[dict]) -> list[int]:
    text = render_text(tokenizer, prompt, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, length: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, length], attention mask) with ``side`` padding."""
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), length), dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        if n == 0:
            continue
        if side == "right":
            ids[i, :n] = torch.tensor(list(s))
            mask[i, :n] = 1
        else:
            ids[i, length - n :] = torch.tensor(list(s))
            mask[i, length - n :] = 1
    return ids, mask


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only real tokens (0 at the first real token, whatever the padding)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


class PreferenceDataModule(StepDataModule):
    """Step batches of preference pairs: for each side (chosen, rejected) ``*_ids``,
    ``*_mask`` (attention) and ``*_labels`` (the answer's tokens), plus ``margin``, ``valid``
    (0 for the padding pairs that complete the last step) and ``index`` (the pair's number,
    for precomputed reference log-probs). Shapes ``[grad_accum, micro_batch, ...]``."""

    kind = "preference"
    report_name = "preference_data_report.json"
    sides = ("chosen", "rejected")
    """The sequences of one unit, each with ``*_ids``, ``*_mask`` and ``*_labels``."""
    unit_name = "pairs"

    def __init__(
        self,
        train: Sequence[PreferencePair],
        val: Sequence[PreferencePair],
        tokenizer: Any,
        seq_len: int,
        micro_batch_size: int,
        grad_accum: int = 1,
        seed: int = 0,
        on_truncated: str = "skip",
        val_batches: int | None = None,
        padding_side: str = "right",
        read_report: dict | None = None,
        warn_truncated_share: float = 0.1,
    ) -> None:
        super().__init__(micro_batch_size, grad_accum, seed, val_batches)
        if on_truncated not in ("skip", "error"):
            raise ValueError(f"data.on_truncated must be skip or error, got {on_truncated!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"data.padding_side must be right or left, got {padding_side!r}")
        self.tokenizer, self.seq_len, self.padding_side = tokenizer, seq_len, padding_side
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pairs: dict[str, list[tuple[EncodedAnswer, EncodedAnswer, float]]] = {}
        self.counts: dict[str, Counter] = {}
        self.truncated_files: dict[str, Counter] = {}
        for split, pairs in (("train", train), ("val", val)):
            self.pairs[split], self.counts[split], self.truncated_files[split] = self._encode(pairs, on_truncated)
            c = self.counts[split]
            warn_truncated(
                "preference",
                self.unit_name,
                split,
                c[self.unit_name],
                c["truncated"],
                self.truncated_files[split],
                seq_len,
                warn_truncated_share,
            )
        if not self.pairs["train"]:
            raise ChatDataError("preference data: no training pair left (see the data report)")
        self.read_report = read_report or {}

    def _encode(self, pairs: Sequence[PreferencePair], on_truncated: str) -> tuple[list, Counter, Counter]:
        """Encoded pairs, counts and, per source file, the pairs cut at ``seq_len``. ``truncated``
        counts every pair cut at ``seq_len``, kept or dropped (``prompt_too_long``,
        ``identical_after_truncation``)."""
        counts: Counter = Counter()
        files: Counter = Counter()
        out = []
        for p in pairs:
            counts["pairs"] += 1
            c = encode_answer(self.tokenizer, p.prompt, p.chosen, self.seq_len)
            r = encode_answer(self.tokenizer, p.prompt, p.rejected, self.seq_len)
            if c is None or r is None or c.truncated or r.truncated:
                counts["truncated"] += 1
                files[source_file(p.origin)] += 1
            if c is None or r is None:
                if on_truncated == "error":
                    raise ChatDataError(
                        f"{p.origin}: prompt: longer than the context (data.seq_len={self.seq_len}) leaves no answer token; "
                        "raise data.seq_len or set data.on_truncated=skip"
                    )
                counts["prompt_too_long"] += 1
                continue
            if c.ids == r.ids:  # identical after truncation: no preference left to learn
                counts["identical_after_truncation"] += 1
                continue
            out.append((c, r, p.margin))
        return out, counts, files

    def units(self, split: str, epoch: int) -> list[int]:
        order = list(range(len(self.pairs[split])))
        if split == "train":
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def has_split(self, split: str) -> bool:
        return bool(self.pairs.get(split))

    def collate_micro(self, split: str, idx: Sequence[int | None]) -> dict[str, torch.Tensor]:
        items = [self.pairs[split][i] if i is not None else None for i in idx]
        longest = max((len(s.ids) for it in items if it for s in it[:2]), default=1)
        length = int(-(-longest // 8) * 8)
        out: dict[str, torch.Tensor] = {}
        for k, name in enumerate(self.sides):
            seqs = [it[k].ids if it else [] for it in items]
            ids, mask = pad_batch(seqs, self.pad_id, length, self.padding_side)
            labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
            for b, it in enumerate(items):
                if it:
                    lab, n = it[k].labels, len(it[k].ids)
                    start = 0 if self.padding_side == "right" else length - n
                    labels[b, start : start + n - 1] = torch.tensor(lab)
            out[f"{name}_ids"], out[f"{name}_mask"], out[f"{name}_labels"] = ids, mask, labels
        out.update(self._extras(items))
        out["valid"] = torch.tensor([1 if it else 0 for it in items])
        out["index"] = torch.tensor([i if i is not None else -1 for i in idx])
        return out

    def _extras(self, items: list) -> dict[str, torch.Tensor]:
        return {"margin": torch.tensor([it[2] if it else 0.0 for it in items])}

    def collate_step(self, split: str, step_units: list[Any]) -> dict[str, torch.Tensor]:
        micros = self.micro_batches(split, step_units)
        # one padded length for the whole step so micro-batches stack
        parts = [self.collate_micro(split, m) for m in micros]
        length = max(p[f"{self.sides[0]}_ids"].shape[1] for p in parts)
        for p in parts:
            for k in list(p):
                if p[k].dim() == 2 and p[k].shape[1] < length:
                    p[k] = _extend(p[k], length, k, self.pad_id, self.padding_side)
        return stack_micro(parts)

    def report(self) -> dict:
        rep: dict[str, Any] = {"read": self.read_report}
        for split in ("train", "val"):
            c = dict(self.counts[split])
            c["truncated"] = c.get("truncated", 0)
            n = c.get(self.unit_name)
            c["truncated_share"] = round(c["truncated"] / n, 4) if n else 0.0
            c["truncated_files"] = dict(self.truncated_files[split])
            rep[split] = c
        rep["seq_len"] = self.seq_len
        return rep


class KTODataModule(PreferenceDataModule):
    """Step batches of KTO examples: ``completion_*`` (the prompt and its answer) and ``kl_*``
    (the same prompt with another prompt's answer, :func:`mismatched_partners`: KTO's reference
    point), ``desirable`` (1 thumbs-up, 0 thumbs-down), ``valid`` and ``index``. ``self.pairs``
    holds the encoded examples (the name the reference precomputation reads)."""

    sides = ("completion", "kl")
    unit_name = "examples"

    def _encode(self, examples: Sequence[KTOExample], on_truncated: str) -> tuple[list, Counter, Counter]:
        counts: Counter = Counter()
        files: Counter = Counter()
        kept: list[KTOExample] = []
        enc: list[EncodedAnswer] = []
        for e in examples:
            counts["examples"] += 1
            a = encode_answer(self.tokenizer, e.prompt, e.completion, self.seq_len)
            if a is None or a.truncated:
                counts["truncated"] += 1
                files[source_file(e.origin)] += 1
            if a is None:
                if on_truncated == "error":
                    raise ChatDataError(
                        f"{e.origin}: prompt: longer than the context (data.seq_len={self.seq_len}) leaves no answer token; "
                        "raise data.seq_len or set data.on_truncated=skip"
                    )
                counts["prompt_too_long"] += 1
                continue
            kept.append(e)
            enc.append(a)
        out = []
        if kept:
            partner = mismatched_partners([e.group for e in kept], self.seed)
            for i, e in enumerate(kept):
                kl = encode_answer(self.tokenizer, e.prompt, kept[partner[i]].completion, self.seq_len)
                if kl is None:  # cannot happen: the prompt fits with its own answer
                    raise ChatDataError(f"{e.origin}: prompt: leaves no room for a mismatched answer")
                out.append((enc[i], kl, e.desirable))
                counts["desirable" if e.desirable else "undesirable"] += 1
        return out, counts, files

    def _extras(self, items: list) -> dict[str, torch.Tensor]:
        return {"desirable": torch.tensor([1 if it and it[2] else 0 for it in items])}


def _extend(x: torch.Tensor, length: int, key: str, pad_id: int, side: str) -> torch.Tensor:
    fill = pad_id if key.endswith("_ids") else (IGNORE_INDEX if key.endswith("_labels") else 0)
    extra = torch.full((x.shape[0], length - x.shape[1]), fill, dtype=x.dtype)
    return torch.cat([x, extra], 1) if side == "right" else torch.cat([extra, x], 1)


class PromptDataModule(StepDataModule):
    """Step batches of prompts for PPO: ``prompt_ids`` left-padded (generation appends on the
    right), ``prompt_mask``, ``index``; ``[grad_accum=1, batch, P]``."""

    kind = "prompt"

    def __init__(
        self,
        train: Sequence[list[dict]],
        val: Sequence[list[dict]],
        tokenizer: Any,
        max_prompt_tokens: int,
        batch_size: int,
        seed: int = 0,
        on_truncated: str = "skip",
        val_batches: int | None = None,
        read_report: dict | None = None,
    ) -> None:
        super().__init__(batch_size, 1, seed, val_batches)
        self.tokenizer, self.max_prompt_tokens = tokenizer, max_prompt_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.prompts: dict[str, list[tuple[list[dict], list[int]]]] = {}
        self.counts: dict[str, Counter] = {}
        for split, prompts in (("train", train), ("val", val)):
            kept, c = [], Counter()
            for p in prompts:
                c["prompts"] += 1
                ids = encode_prompt(tokenizer, p)
                if len(ids) > max_prompt_tokens:
                    if on_truncated == "error":
                        raise ChatDataError(
                            f"a prompt of {len(ids)} tokens is longer than stage.ppo.max_prompt_tokens={max_prompt_tokens}: "
                            f"{p[-1]['content'][:60]!r}...; raise it or set data.on_truncated=skip"
                        )
                    c["prompt_too_long"] += 1
                    continue
                kept.append((p, ids))
            self.prompts[split], self.counts[split] = kept, c
        if not self.prompts["train"]:
            raise ChatDataError("PPO: no training prompt left (see the data report)")
        self.read_report = read_report or {}

    def units(self, split: str, epoch: int) -> list[int]:
        """Whole batches only (a rollout batch is never completed with padding): the few prompts
        that do not fill the last batch of an epoch are left out of it; each epoch reshuffles,
        so they are used in others."""
        order = list(range(len(self.prompts[split])))
        if split == "train":
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        _, world = self._rank_world()
        per = self.mb * world
        return order[: len(order) // per * per] if len(order) >= per else order

    def has_split(self, split: str) -> bool:
        return bool(self.prompts.get(split))

    def collate_step(self, split: str, step_units: list[Any]) -> dict[str, torch.Tensor]:
        real = [i for i in step_units if i is not None]
        seqs = [self.prompts[split][i][1] for i in real]
        length = max(len(s) for s in seqs)
        ids, mask = pad_batch(seqs, self.pad_id, length, "left")
        return {"prompt_ids": ids, "prompt_mask": mask, "index": torch.tensor(real)}

    def prompt_messages(self, split: str, index: int) -> list[dict]:
        return self.prompts[split][index][0]

    def report(self) -> dict:
        return {"read": self.read_report, "train": dict(self.counts["train"]), "val": dict(self.counts["val"])}
