"""Evaluation of tasks with verifiable answers (``type: verified``): greedy accuracy and pass@k.

The problems are GRPO's tasks (:mod:`llm.rl.tasks`): a tasks ``.jsonl`` file (``read_tasks``: a bad
line stops with ``file:line`` and the field) or ``builtin:<name>``, a built-in generator's held-out
``test`` split (``limit`` problems, default :data:`BUILTIN_PROBLEMS`, from ``seed``, ``params`` and
``held_out``). Each problem is answered

* once greedily: ``greedy_accuracy`` is the fraction of greedy answers verified right;
* ``samples`` (n) times by sampling (``temperature``, ``top_p``), seeded by ``seed``:
  ``pass@k`` for k = 1 and each of ``pass_k`` is the mean over problems of the unbiased estimator
  :func:`llm.eval.passk.pass_at_k` of the problem's n answers, c of them right.

An answer is right when :func:`llm.rl.tasks.verify` gives it the full reward (1.0), whatever the
verifier. Generation goes through the one engine (:class:`llm.model.engine.Engine`), in batches
of ``batch_size`` problems times their answers (left-padded, one ``generate`` call each). The
result's ``problems`` (per problem: prompt, gold answer, greedy answer and verdict, the sampled
answers and their verdicts) go to a ``.jsonl`` beside the results JSON (:func:`llm.eval.core.write_results`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from llm.eval.passk import pass_at_k

log = logging.getLogger(__name__)

BUILTIN_PROBLEMS = 100
"""Problems generated for ``builtin:<name>`` when the task sets no ``limit``."""


def report_ks(task: Any) -> list[int]:
    """The k of the pass@k a verified task reports (1 and ``pass_k``, sorted; none without
    samples). Raises :class:`~llm.eval.core.EvalDataError` naming the task and the fix for a k
    above ``samples`` and for impossible sampling settings."""
    from llm.eval.core import EvalDataError

    n, ks = int(task.samples), sorted({int(k) for k in task.pass_k})
    if n < 0:
        raise EvalDataError(f"task {task.name}: samples={n}: must be >= 0 (0: greedy answers only)")
    bad = [k for k in ks if not 1 <= k <= n]
    if bad:
        raise EvalDataError(
            f"task {task.name}: pass@{bad[-1]} needs at least {bad[-1]} sampled answers per problem, but samples (--n) is {n}: "
            f"each k of pass_k (--k) must be in 1..samples"
        )
    if n and not (task.temperature > 0 and 0 < task.top_p <= 1):
        raise EvalDataError(f"task {task.name}: temperature={task.temperature} must be > 0 and top_p={task.top_p} in (0, 1]")
    if task.max_new_tokens < 1:
        raise EvalDataError(f"task {task.name}: max_new_tokens={task.max_new_tokens}: must be at least 1")
    return sorted({1, *ks}) if n else []


def load_problems(task: Any) -> list[Any]:
    """The :class:`~llm.rl.tasks.Task` list of a verified eval task (see the module docstring)."""
    from omegaconf import OmegaConf

    from llm.eval.core import EvalDataError
    from llm.rl.tasks import builtin_tasks, read_tasks

    spec = task.path
    if not spec:
        raise EvalDataError(
            f"task {task.name}: type verified needs path: builtin:<name> (arithmetic, countdown, ...) or a tasks .jsonl file"
        )
    if spec.startswith("builtin:"):
        params = OmegaConf.to_container(task.params) if OmegaConf.is_config(task.params) else dict(task.params)
        n = BUILTIN_PROBLEMS if task.limit is None else int(task.limit)
        try:
            return builtin_tasks(spec.split(":", 1)[1], n, "test", seed=int(task.seed), held_out=float(task.held_out), **params)
        except (ValueError, TypeError) as e:
            raise EvalDataError(f"task {task.name}: {spec}: {e}") from None
    if not Path(spec).is_file():
        raise FileNotFoundError(f"task {task.name}: tasks file not found: {spec} (expected builtin:<name> or a tasks .jsonl file)")
    problems = read_tasks(spec)
    return problems[: task.limit] if task.limit is not None else problems


def _cut(row: Sequence[int], stops: set[int]) -> list[int]:
    """The tokens before the first stop token."""
    out = []
    for t in row:
        if t in stops:
            break
        out.append(t)
    return out


def answer_all(
    engine: Any, prompts: Sequence[Any], sampling: Any, per_prompt: int, rows_per_call: int, progress: Any = None
) -> list[list[str]]:
    """``per_prompt`` answers to each prompt, generated ``rows_per_call`` rows at a time through
    ``engine`` (prompts left-padded); each cut before its first stop token."""
    enc = [engine.encode_prompt(p)[0].tolist() for p in prompts]
    rows = [i for i in range(len(enc)) for _ in range(per_prompt)]
    stops = set(engine.eos if isinstance(engine.eos, list) else [engine.eos] if engine.eos is not None else [])
    pad = engine.pad if engine.pad is not None else 0
    texts: list[str] = []
    for b in range(0, len(rows), rows_per_call):
        chunk = [enc[i] for i in rows[b : b + rows_per_call]]
        width = max(len(e) for e in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, e in enumerate(chunk):
            ids[r, width - len(e) :] = torch.tensor(e, dtype=torch.long)
            mask[r, width - len(e) :] = 1
        new = engine.generate(ids.to(engine.device), mask.to(engine.device), sampling)
        texts.extend(engine.tokenizer.decode(_cut(row, stops), skip_special_tokens=True) for row in new.tolist())
        if progress is not None:
            progress.update(len(chunk))
    return [texts[i * per_prompt : (i + 1) * per_prompt] for i in range(len(enc))]


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar on a terminal (``None`` elsewhere, e.g. in logs of training runs)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="answer", dynamic_ncols=True)


def run_verified(model: Any, tokenizer: Any, task: Any, batch_size: int = 8) -> dict[str, Any]:
    """Greedy accuracy and pass@k of a verified task (see the module docstring)."""
    from llm.eval.core import EvalDataError
    from llm.model.engine import Engine, Sampling
    from llm.rl.tasks import verify

    ks = report_ks(task)
    if task.chat and not getattr(tokenizer, "chat_template", None):
        raise EvalDataError(f"task {task.name}: chat: true needs a model with a chat template (an SFT export); this tokenizer has none")
    problems = load_problems(task)
    n = int(task.samples)
    engine = Engine(model, tokenizer, chat=bool(task.chat))
    prompts = [p.prompt for p in problems]
    rows = max(1, batch_size) * max(1, n)
    bar = _progress(len(problems) * (1 + n), f"eval {task.name}")
    device = engine.device
    try:
        greedy = answer_all(engine, prompts, Sampling(int(task.max_new_tokens)), 1, rows, bar)
        sampled: list[list[str]] = [[] for _ in problems]
        if n:
            sampling = Sampling(int(task.max_new_tokens), do_sample=True, temperature=float(task.temperature), top_p=float(task.top_p))
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG is left as it was
                torch.manual_seed(int(task.seed))
                sampled = answer_all(engine, prompts, sampling, n, rows, bar)
    finally:
        if bar is not None:
            bar.close()
    records, right = [], 0
    sums = dict.fromkeys(ks, 0.0)
    for prob, g, answers in zip(problems, greedy, sampled, strict=True):
        g_ok = verify(prob, g[0]) >= 1.0
        verdicts = [verify(prob, a) >= 1.0 for a in answers]
        right += g_ok
        for k in ks:
            sums[k] += pass_at_k(n, sum(verdicts), k)
        records.append(
            {
                "id": prob.id,
                "prompt": prob.prompt,
                "gold": prob.answer if prob.answer is not None else prob.meta,
                "greedy": g[0],
                "greedy_correct": g_ok,
                "answers": answers,
                "verdicts": verdicts,
            }
        )
    N = len(problems)
    res: dict[str, Any] = {"greedy_accuracy": right / N}
    res.update({f"pass@{k}": sums[k] / N for k in ks})
    res.update(n=N, samples=n, temperature=float(task.temperature), top_p=float(task.top_p), seed=int(task.seed))
    res["problems"] = records
    res["example_prompt"] = engine.tokenizer.decode(engine.encode_prompt(prompts[0])[0]) if prompts else ""
    return res
