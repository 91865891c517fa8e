"""Evaluation: perplexity, few-shot and multiple-choice log-likelihood scoring, exact match.

Four task types (``EvalTaskConfig.type``):

* ``perplexity``: documents are tokenized (the tokenizer's own special tokens), a prefix token
  (BOS, else EOS) is put in front so that every token of the document is predicted, and the
  sequence is scored in windows of at most ``max_length`` input tokens (default 2048, or the
  model's context if shorter): the first window predicts all its tokens, each later one
  ``stride`` new tokens (default: the window, so windows are disjoint) after as much preceding
  text as fits, with the prefix token in front again when ``bos_per_window`` (default). The
  output layer and cross-entropy run on slices of positions, so memory is bounded by the
  window, whatever the document's length. ``ppl = exp(sum NLL / tokens)``; ``bits_per_byte =
  sum NLL / ln 2 / UTF-8 bytes`` compares models with different tokenizers.
* ``choice``: the prompt (``description`` + k examples + the query, joined by
  ``fewshot_delimiter``) is the context; each option, after ``target_delimiter``, is a
  continuation; the prediction is the option with the highest log-likelihood (``acc``) or the
  highest log-likelihood per character of the option (``acc_norm``). This is how
  lm-evaluation-harness scores ``multiple_choice`` tasks, down to the tokenization: trailing
  spaces of the context move to the continuation, ``encode(context + continuation)`` is split
  after ``len(encode(context))`` tokens, and too-long inputs lose tokens on the left. A few-shot
  classification task is a choice task whose options are the labels.
* ``generate``: greedy continuation of the prompt (``chat: true``: as a user turn in the model's
  chat template), cut at the first ``stop`` string; ``exact_match`` compares the stripped text
  (case-insensitively unless ``ignore_case: false``) with the answer or any of a list of answers;
  ``extract``, a regular expression, first picks the answer out of the output.
* ``verified``: tasks with a verifier (GRPO's, :mod:`llm.rl.tasks`), answered greedily and
  ``samples`` times by sampling: ``greedy_accuracy`` and unbiased ``pass@k``
  (:mod:`llm.eval.verified`); the per-problem answers and verdicts go to a ``.jsonl`` beside the
  results.

Records are JSON lines. Errors name the file, the line and the field.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BUILTIN_ZEN = "builtin:zen-of-python"
TASK_TYPES = ("perplexity", "choice", "generate", "verified")


class EvalDataError(ValueError):
    """A task file or task config is wrong; the message names the file, line and field."""


# ============================================================================ task records
def task_file(path: str) -> Path:
    """``builtin:<name>`` -> the file shipped in ``llm/eval/tasks``; else the path itself."""
    if path.startswith("builtin:"):
        name = path.split(":", 1)[1]
        p = TASKS_DIR / f"{name}.jsonl"
        if not p.is_file():
            have = sorted(q.stem for q in TASKS_DIR.glob("*.jsonl"))
            raise EvalDataError(f"unknown builtin task data {path!r}; shipped: {', '.join('builtin:' + h for h in have)}")
        return p
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"task data not found: {p}")
    return p


def read_records(path: str) -> list[tuple[str, dict]]:
    """``(where, record)`` for each non-blank line; ``where`` is ``file:line``."""
    p = task_file(path)
    out = []
    with open(p, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{p}:{i}"
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalDataError(f"{where}: not valid JSON ({e.msg})") from None
            if not isinstance(rec, dict):
                raise EvalDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            out.append((where, rec))
    if not out:
        raise EvalDataError(f"{p}: no records")
    return out


def _field(where: str, rec: dict, name: str) -> Any:
    if name not in rec:
        raise EvalDataError(f"{where}: missing field {name!r} (fields: {', '.join(sorted(rec))})")
    return rec[name]


def _fmt(where: str, template: str, rec: dict) -> str:
    try:
        return template.format(**rec)
    except KeyError as e:
        raise EvalDataError(f"{where}: template {template!r} needs field {e.args[0]!r}, which the record lacks") from None


class Item:
    """One evaluated record: its prompt text (before few-shot context), options and gold."""

    def __init__(self, where: str, rec: dict, task: Any) -> None:
        self.where, self.rec = where, rec
        self.text = _fmt(where, task.template, rec)
        ans = _field(where, rec, task.answer_field)
        if task.type == "choice":
            choices = rec.get(task.choices_field, None)
            if choices is None:
                if not task.choices:
                    raise EvalDataError(f"{where}: missing field {task.choices_field!r} and the task sets no shared 'choices'")
                choices = list(task.choices)
            if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
                raise EvalDataError(f"{where}: {task.choices_field!r} must be a list of at least two strings")
            if isinstance(ans, bool) or not isinstance(ans, (int, str)):
                raise EvalDataError(f"{where}: {task.answer_field!r} must be an option's index or its text")
            if isinstance(ans, str):
                if ans not in choices:
                    raise EvalDataError(f"{where}: {task.answer_field!r} {ans!r} is not one of the options {choices}")
                ans = choices.index(ans)
            elif not 0 <= ans < len(choices):
                raise EvalDataError(f"{where}: {task.answer_field!r} index {ans} is out of range for {len(choices)} options")
            self.choices: list[str] = choices
            self.gold: Any = ans
            self.target = choices[ans]
        else:
            answers = ans if isinstance(ans, list) else [ans]
            if not answers or not all(isinstance(a, str) for a in answers):
                raise EvalDataError(f"{where}: {task.answer_field!r} must be a string or a list of strings")
            self.choices, self.gold, self.target = [], answers, answers[0]


def build_prompts(task: Any) -> list[tuple[Item, str]]:
    """``(item, context)`` per evaluated record, few-shot examples included."""
    every = [Item(w, r, task) for w, r in read_records(task.path)]
    items = every[: task.limit] if task.limit is not None else every
    shots = int(task.shots)
    pool = [Item(w, r, task) for w, r in read_records(task.fewshot_path)] if task.fewshot_path else None
    if shots < 0:
        raise EvalDataError(f"task {task.name}: shots must be >= 0, got {shots}")
    if task.fewshot_sampler not in ("first_n", "random"):
        raise EvalDataError(f"task {task.name}: fewshot_sampler must be first_n or random, got {task.fewshot_sampler!r}")
    rng = random.Random(task.seed)
    out = []
    for item in items:
        examples: list[Item] = []
        if shots:
            cands = pool if pool is not None else [x for x in every if x is not item]
            if len(cands) < shots:
                raise EvalDataError(f"task {task.name}: {shots} shots asked, only {len(cands)} examples to draw from")
            examples = cands[:shots] if task.fewshot_sampler == "first_n" else rng.sample(cands, shots)
        parts = [e.text + task.target_delimiter + e.target for e in examples]
        ctx = task.fewshot_delimiter.join(parts) + (task.fewshot_delimiter if parts else "") + item.text
        out.append((item, task.description + ctx))
    return out


# ============================================================================ scoring
def model_max_length(model: Any, default: int = 2048) -> int:
    cfg = model.config
    for attr in ("max_position_embeddings", "n_positions", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return default


def prefix_token(tokenizer: Any) -> int:
    for t in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if t is not None:
            return int(t)
    raise ValueError("the tokenizer has neither a BOS nor an EOS token to condition an empty context on")


def encode(tokenizer: Any, text: str) -> list[int]:
    """The tokenizer's default encoding (its own special tokens), as lm-eval's ``hf`` model does."""
    return list(tokenizer(text).input_ids)


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split: trailing spaces of the context go to the continuation;
    ``encode(context + continuation)`` is cut after ``len(encode(context))`` tokens; an empty
    context becomes the prefix token."""
    if context == "":
        cont = list(tokenizer(continuation, add_special_tokens=False).input_ids)
        p = prefix_token(tokenizer)
        return ([p], cont) if not cont or cont[0] != p else (cont[:1], cont[1:])
    n = len(context) - len(context.rstrip())
    if n:
        continuation, context = context[-n:] + continuation, context[:-n]
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx) :]


@torch.no_grad()
def score_sequences(
    model: Any, seqs: Sequence[Sequence[int]], n_targets: Sequence[int], batch_size: int = 8, pad_id: int = 0
) -> list[tuple[float, bool]]:
    """For each token sequence, the summed log-probability of its last ``n`` tokens given
    everything before them, and whether each of those tokens was the argmax (greedy)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # similar lengths share a batch
    out: list[tuple[float, bool] | None] = [None] * len(seqs)
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(seqs[i]) - 1 for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                s = seqs[i][:-1]
                ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
                mask[r, : len(s)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(idx):
                n, L = int(n_targets[i]), len(seqs[i]) - 1
                if n == 0:
                    out[i] = (0.0, True)
                    continue
                lp = logp[r, L - n : L]
                tgt = torch.tensor(seqs[i][L + 1 - n :], dtype=torch.long, device=lp.device)
                ll = lp.gather(-1, tgt[:, None]).sum().item()
                greedy = bool((lp.argmax(-1) == tgt).all())
                out[i] = (ll, greedy)
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def loglikelihoods(
    model: Any, tokenizer: Any, requests: Sequence[tuple[str, str]], batch_size: int = 8, max_length: int | None = None
) -> list[tuple[float, bool]]:
    """``log p(continuation | context)`` and is-greedy per ``(context, continuation)``, as
    lm-evaluation-harness's ``hf`` model computes them."""
    L = max_length or model_max_length(model)
    seqs, ns = [], []
    for ctx, cont in requests:
        c, t = encode_pair(tokenizer, ctx, cont)
        if len(t) > L:
            raise ValueError(f"a continuation of {len(t)} tokens exceeds the maximum length {L}")
        seqs.append((c + t)[-(L + 1) :])
        ns.append(len(t))
    return score_sequences(model, seqs, ns, batch_size, _pad(tokenizer))


def _pad(tokenizer: Any) -> int:
    for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if t is not None:
            return int(t)
    return 0


# ============================================================================ tasks
def read_texts(task: Any) -> list[str]:
    """Documents of a perplexity task: ``sources`` (text files, dirs, ``builtin:...``) and/or a
    ``.jsonl`` ``path`` read with ``text_field``."""
    docs: list[str] = []
    if task.path:
        for where, rec in read_records(task.path):
            t = _field(where, rec, task.text_field)
            if not isinstance(t, str):
                raise EvalDataError(f"{where}: {task.text_field!r} must be a string")
            docs.append(t)
    srcs = [s for s in task.sources if s != BUILTIN_ZEN]
    if BUILTIN_ZEN in task.sources:
        docs.append(zen_of_python())
    if srcs:
        from llm.data.text import iter_documents

        docs.extend(iter_documents(list(srcs), task.text_field))
    docs = [d for d in docs if d.strip()]
    if task.limit is not None:
        docs = docs[: task.limit]
    if not docs:
        raise EvalDataError(f"task {task.name}: no documents (set path or sources)")
    return docs


def zen_of_python() -> str:
    """PEP 20, as ``import this`` prints it (the stdlib keeps it ROT13-encoded: it is in no
    docstring, so ``builtin:python-docs`` training never saw it)."""
    import codecs
    import importlib.util

    spec = importlib.util.find_spec("this")
    src = Path(spec.origin).read_text(encoding="utf-8")  # type: ignore[union-attr,arg-type]
    s = src.split('s = """', 1)[1].split('"""', 1)[0]
    return codecs.decode(s, "rot13")


PPL_WINDOW = 2048
"""Default perplexity window (tokens the model reads at once) when the task sets no ``max_length``:
the model's context if shorter. lm-evaluation-harness's default length; attention memory grows
with the square of the window, and beyond a few thousand tokens of context a token's loss hardly
falls any further."""
CHUNK_ELEMENTS = 1 << 23
"""Logits computed at once when scoring perplexity (rows x vocabulary; 32 MB in float32)."""


def perplexity_windows(n: int, window: int, stride: int | None = None, bos_per_window: bool = True) -> list[tuple[int, int, int]]:
    """How a document of ``n`` tokens (``toks[0]`` is the prefix token) is scored in windows of
    at most ``window`` input tokens: ``(c, a, b)`` per window, where the model reads
    ``toks[c:b-1]`` (with the prefix token in front when ``bos_per_window`` and ``c > 0``) and
    predicts ``toks[a:b]``. Every token ``1..n-1`` is predicted exactly once. The first window
    predicts up to ``window`` tokens; each later one ``stride`` new tokens (``None``: the window,
    disjoint windows), with the tokens before them as context, as many as fit."""
    if window < 1 + bos_per_window:
        raise ValueError(f"perplexity window {window} is too short{' for the prefix token and one token' if bos_per_window else ''}")
    stride = window if stride is None else stride
    if not 1 <= stride <= window:
        raise ValueError(f"perplexity stride {stride} must be in [1, window={window}]")
    out = []
    a = 1
    while a < n:
        b = min(n, 1 + window) if a == 1 else min(n, a + stride)
        c = max(0, b - 1 - window)
        if bos_per_window and c > 0:
            b = min(b, a - 1 + window)  # one input position goes to the prefix token
            c = max(0, b - window)
        out.append((c, a, b))
        a = b
    return out


def _nll_rows(head: Any, hidden: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed cross-entropy of ``head(hidden)`` [T, V] against ``targets`` [T], a slice of rows at a
    time (never [T, V] float32 logits at once)."""
    weight = getattr(head, "weight", None)
    V = weight.shape[0] if isinstance(weight, torch.Tensor) else hidden.shape[-1]
    rows = max(1, CHUNK_ELEMENTS // V)
    total = 0.0
    for i in range(0, hidden.shape[0], rows):
        logits = head(hidden[i : i + rows]).float()
        total += torch.nn.functional.cross_entropy(logits, targets[i : i + rows], reduction="sum").item()
    return total


def _head_inputs(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> tuple[Any, torch.Tensor] | None:
    """The model's forward with its output layer computing the last position only; the hidden
    states the layer was given [B, L, H]. ``None`` where that cannot be trusted: no output layer,
    or logits that are not the output layer's (a soft-cap or scale after it)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Module):
        return None
    seen: dict[str, torch.Tensor] = {}

    def keep_last(_mod: Any, args: tuple) -> tuple | None:
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3 or "h" in seen:
            return None
        seen["h"] = args[0]
        return (args[0][:, -1:], *args[1:])

    handle = head.register_forward_pre_hook(keep_last)
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        handle.remove()
    h = seen.get("h")
    if h is None or h.shape[:2] != ids.shape or logits.shape[:2] != (ids.shape[0], 1):
        return None
    if not torch.allclose(logits[:, -1].float(), head(h[:, -1]).float(), rtol=1e-5, atol=1e-5):
        return None
    return head, h


_warned_fallback = False


@torch.no_grad()
def window_nll(model: Any, windows: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 8, pad_id: int = 0) -> float:
    """Summed negative log-likelihood of ``targets`` over ``(inputs, targets)`` windows, where the
    last ``len(targets)`` input positions predict the targets. The output layer and the
    cross-entropy run on slices of the target positions, so memory is bounded by the window, not
    by the vocabulary times the window."""
    global _warned_fallback
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    total = 0.0
    try:
        for b in range(0, len(order), batch_size):
            idx = order[b : b + batch_size]
            width = max(len(windows[i][0]) for i in idx)
            ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for r, i in enumerate(idx):
                ids[r, : len(windows[i][0])] = torch.tensor(list(windows[i][0]), dtype=torch.long)
                mask[r, : len(windows[i][0])] = 1
            ids, mask = ids.to(device), mask.to(device)
            rows = [(r, len(windows[i][0]), len(windows[i][1])) for r, i in enumerate(idx)]
            tgt = torch.tensor([t for i in idx for t in windows[i][1]], dtype=torch.long, device=device)
            got = _head_inputs(model, ids, mask)
            if got is not None:
                head, h = got
                sel = torch.cat([h[r, L - n : L] for r, L, n in rows])
                total += _nll_rows(head, sel, tgt)
                continue
            if not _warned_fallback:
                log.warning("perplexity: the model's logits are not its output layer's alone; scoring from full logits")
                _warned_fallback = True
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
            sel = torch.cat([logits[r, L - n : L] for r, L, n in rows])
            total += _nll_rows(torch.nn.Identity(), sel, tgt)
    finally:
        model.train(was_training)
    return total


def perplexity(
    model: Any,
    tokenizer: Any,
    docs: Sequence[str],
    batch_size: int = 8,
    max_length: int | None = None,
    stride: int | None = None,
    bos_per_window: bool = True,
) -> dict[str, float]:
    """Token perplexity and bits per byte of ``docs``, in windows of ``max_length`` input tokens
    (``None``: :data:`PPL_WINDOW` or the model's context if shorter); see :func:`perplexity_windows`."""
    L = max_length or min(PPL_WINDOW, model_max_length(model))
    p = prefix_token(tokenizer)
    windows: list[tuple[list[int], list[int]]] = []
    n_bytes = 0
    for d in docs:
        ids = encode(tokenizer, d)
        toks = ids if ids and ids[0] == p else [p] + ids
        n_bytes += len(d.encode("utf-8"))
        for c, a, b in perplexity_windows(len(toks), L, stride, bos_per_window):
            inputs = ([p] if bos_per_window and c > 0 else []) + toks[c : b - 1]
            windows.append((inputs, toks[a:b]))
    nll = window_nll(model, windows, batch_size, _pad(tokenizer))
    n = sum(len(t) for _, t in windows)
    return {
        "ppl": math.exp(nll / n),
        "nll": nll / n,
        "bits_per_byte": nll / math.log(2) / max(1, n_bytes),
        "tokens": n,
        "docs": len(docs),
        "windows": len(windows),
        "window": L,
    }


def _stderr(acc: float, n: int) -> float:
    return math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else float("nan")


def run_choice(model: Any, tokenizer: Any, task: Any, batch_size: int = 8) -> dict[str, Any]:
    prompts = build_prompts(task)
    reqs, owner = [], []
    for k, (item, ctx) in enumerate(prompts):
        for c in item.choices:
            reqs.append((ctx, task.target_delimiter + c))
            owner.append(k)
    lls = loglikelihoods(model, tokenizer, reqs, batch_size, task.max_length)
    per: list[list[float]] = [[] for _ in prompts]
    for k, (ll, _) in zip(owner, lls):
        per[k].append(ll)
    acc = acc_norm = 0
    preds = []
    for (item, _), ll in zip(prompts, per):
        pred = max(range(len(ll)), key=lambda i: ll[i])
        norm = [x / len(c) for x, c in zip(ll, item.choices)]
        pred_n = max(range(len(norm)), key=lambda i: norm[i])
        acc += pred == item.gold
        acc_norm += pred_n == item.gold
        preds.append({"where": item.where, "pred": pred, "pred_norm": pred_n, "gold": item.gold, "loglik": ll})
    n = len(prompts)
    return {
        "acc": acc / n,
        "acc_stderr": _stderr(acc / n, n),
        "acc_norm": acc_norm / n,
        "n": n,
        "shots": task.shots,
        "predictions": preds,
        "example_prompt": prompts[0][1],
    }


def _cut(text: str, stops: Iterable[str]) -> str:
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text


def run_generate(model: Any, tokenizer: Any, task: Any) -> dict[str, Any]:
    from llm.model.engine import generate_text

    if task.chat and not getattr(tokenizer, "chat_template", None):
        raise EvalDataError(f"task {task.name}: chat: true needs a model with a chat template (an SFT export); this tokenizer has none")
    prompts = build_prompts(task)
    outs = generate_text(model, tokenizer, [c for _, c in prompts], task.max_new_tokens, chat=task.chat)
    hits, preds = 0, []
    for (item, _), out in zip(prompts, outs):
        ans = _cut(out, task.stop).strip()
        if task.extract:
            m = re.search(task.extract, ans)
            ans = (m.group(1) if m.groups() else m.group(0)).strip() if m else ""
        a = ans.lower() if task.ignore_case else ans
        golds = [g.strip().lower() if task.ignore_case else g.strip() for g in item.gold]
        ok = a in golds
        hits += ok
        preds.append({"where": item.where, "output": ans, "gold": item.gold, "correct": ok})
    n = len(prompts)
    return {
        "exact_match": hits / n,
        "exact_match_stderr": _stderr(hits / n, n),
        "n": n,
        "shots": task.shots,
        "predictions": preds,
        "example_prompt": prompts[0][1],
    }


def run_task(model: Any, tokenizer: Any, task: Any, batch_size: int = 8) -> dict[str, Any]:
    if task.type not in TASK_TYPES:
        raise EvalDataError(f"task {task.name}: type must be one of {', '.join(TASK_TYPES)}, got {task.type!r}")
    t0 = time.perf_counter()
    if task.type == "perplexity":
        res: dict[str, Any] = perplexity(model, tokenizer, read_texts(task), batch_size, task.max_length, task.stride, task.bos_per_window)
    elif task.type == "choice":
        res = run_choice(model, tokenizer, task, batch_size)
    elif task.type == "verified":
        from llm.eval.verified import run_verified

        res = run_verified(model, tokenizer, task, batch_size)
    else:
        res = run_generate(model, tokenizer, task)
    res["type"] = task.type
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


HEADLINE = {"perplexity": "ppl", "choice": "acc", "generate": "exact_match", "verified": "greedy_accuracy"}


def headline_metrics(res: dict[str, Any]) -> list[str]:
    """The metrics printed for a task's result: its type's headline, and a verified task's pass@k."""
    return [HEADLINE[res["type"]], *(k for k in res if k.startswith("pass@"))]


def run_suite(model: Any, tokenizer: Any, suite: Any, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every task of an :class:`~llm.config.EvalConfig`; ``{"suite", "tasks": {name: result}}``."""
    names = [t.name for t in suite.tasks]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise EvalDataError(f"eval suite {suite.name}: task names must be unique, repeated: {', '.join(sorted(dup))}")
    results: dict[str, Any] = {}
    for task in suite.tasks:
        res = run_task(model, tokenizer, task, suite.batch_size)
        results[task.name] = res
        shown = " ".join(f"{k}={res[k]:.4f}" for k in headline_metrics(res))
        say(f"eval {task.name} ({task.type}, {res.get('n', res.get('docs'))} items, {res['seconds']:.1f}s): {shown}")
    return {"suite": suite.name, "tasks": results}


def flat_metrics(results: dict[str, Any], prefix: str = "eval") -> dict[str, float]:
    """``eval/<task>/<metric>`` -> number, for loggers."""
    out = {}
    for name, res in results["tasks"].items():
        for k, v in res.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seconds", "shots", "seed", "temperature", "top_p"):
                out[f"{prefix}/{name}/{k}"] = float(v)
    return out


def write_results(results: dict[str, Any], path: Path) -> Path:
    """Atomic write of the results JSON (a crash leaves the previous file intact). A task's
    per-problem ``problems`` (verified tasks) go to ``<stem>.<task>.jsonl`` beside it, one problem
    a line, named in the task's ``problems_file``; the JSON keeps the summary."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    summary = dict(results)
    if isinstance(results.get("tasks"), dict):
        summary["tasks"] = {}
        for name, res in results["tasks"].items():
            if isinstance(res, dict) and "problems" in res:
                side = path.with_name(f"{path.stem}.{name}.jsonl")
                tmp = side.with_name(side.name + ".tmp")
                tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in res["problems"]), encoding="utf-8")
                os.replace(tmp, side)
                res["problems_file"] = side.name
                res = {k: v for k, v in res.items() if k != "problems"}
            summary["tasks"][name] = res
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    os.replace(tmp, path)
    return path
