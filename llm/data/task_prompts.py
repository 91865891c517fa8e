"""Prompts for stage=grpo: tasks with verifiable answers (``data.tasks``), or plain prompts.

``data.tasks=builtin:<name>`` generates ``data.tasks_size`` training and ``data.tasks_val_size``
held-out problems from ``data.seed`` (llm/rl/tasks.py's built-in generators, whose splits never
share a problem); a ``.jsonl`` path reads a task file, validated on ``data.val_tasks`` or on
``data.val_fraction`` of its tasks. Each task's prompt becomes one user turn, rendered with the
chat template and its generation prompt. Without ``data.tasks`` the prompts are read as for PPO.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from llm.config import Config
from llm.data.builders import StageData, build_prompt_data, load_chat_tokenizer
from llm.data.preference import PromptDataModule
from llm.rl.tasks import Task, builtin_tasks, read_tasks

log = logging.getLogger(__name__)


class TaskDataModule(PromptDataModule):
    """:class:`PromptDataModule` whose prompts are tasks: :meth:`task` gives the task (its
    verifier and answer) behind a batch's ``index``."""

    kind = "task"

    def __init__(self, train: list[Task], val: list[Task], tokenizer: Any, *args: Any, **kw: Any) -> None:
        convs = {split: [[{"role": "user", "content": t.prompt}] for t in tasks] for split, tasks in (("train", train), ("val", val))}
        super().__init__(convs["train"], convs["val"], tokenizer, *args, **kw)
        by_id = {id(c): t for split, tasks in (("train", train), ("val", val)) for c, t in zip(convs[split], tasks)}
        self.tasks = {split: [by_id[id(p)] for p, _ in self.prompts[split]] for split in ("train", "val")}

    def task(self, split: str, index: int) -> Task:
        return self.tasks[split][index]


def read_task_splits(cfg: Config) -> tuple[list[Task], list[Task], dict[str, Any]]:
    """(training tasks, held-out tasks, a report) from ``data.tasks``."""
    d = cfg.data
    spec = str(d.tasks)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        params = OmegaConf.to_container(d.tasks_params) if OmegaConf.is_config(d.tasks_params) else dict(d.tasks_params)
        common = dict(seed=d.seed, held_out=d.tasks_held_out, **params)
        train = builtin_tasks(name, d.tasks_size, "train", **common)
        val = builtin_tasks(name, d.tasks_val_size, "test", **common) if d.tasks_val_size else []
        return train, val, {"tasks": spec, "params": params, "train": len(train), "val": len(val)}
    if not Path(spec).is_file():
        raise ValueError(f"data.tasks={spec!r}: no such file (expected builtin:<name> or a tasks .jsonl file)")
    tasks = read_tasks(spec, str(d.on_bad_row))
    if d.val_tasks:
        val = read_tasks(d.val_tasks, str(d.on_bad_row))
    else:
        order = list(range(len(tasks)))
        random.Random(d.seed).shuffle(order)
        n_val = int(round(len(tasks) * d.val_fraction))
        held = set(order[:n_val])
        val = [t for i, t in enumerate(tasks) if i in held]
        tasks = [t for i, t in enumerate(tasks) if i not in held]
    return tasks, val, {"tasks": spec, "val_tasks": d.val_tasks, "train": len(tasks), "val": len(val)}


def grpo_data(cfg: Config) -> StageData:
    """stage=grpo's data: tasks (``data.tasks``) or, without them, prompts read as for PPO; prompts
    longer than ``stage.grpo.max_prompt_tokens`` are left out."""
    tokenizer, new_ids = load_chat_tokenizer(cfg)
    if cfg.data.tasks:
        train, val, read_report = read_task_splits(cfg)
        d = cfg.data
        dm = TaskDataModule(
            train, val, tokenizer, cfg.stage.grpo.max_prompt_tokens, d.micro_batch_size, d.seed, d.on_truncated, d.val_batches, read_report
        )
    else:  # PPO's prompt reader, with GRPO's prompt limit
        ppo_like = OmegaConf.merge(cfg, {"stage": {"ppo": {"max_prompt_tokens": cfg.stage.grpo.max_prompt_tokens}}})
        dm = build_prompt_data(ppo_like, tokenizer)

    def announce(run_dir: Path) -> None:
        log.info("prompts: %s", {k: v for k, v in dm.report().items() if k in ("train", "val", "read")})

    return StageData(tokenizer, dm, new_ids, announce)
