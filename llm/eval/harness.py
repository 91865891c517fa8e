"""Run Xiulian's choice tasks under lm-evaluation-harness (its ``hf`` model type), offline.

    python -m llm.eval.harness pretrain harness_tasks/     # write one lm-eval YAML per choice task
    lm_eval --model hf --model_args pretrained=outputs/.../export \\
        --tasks xiulian_python_mc --include_path harness_tasks/

Each YAML reads the task's own ``.jsonl`` through the ``json`` dataset builder that ships with
``datasets`` (no download). Prompts, delimiters and few-shot examples are the same as ours, so
the harness's ``acc``/``acc_norm`` equal ``python -m llm.eval``'s; ``tests/test_eval.py`` checks
that whenever lm-eval is installed (``pip install -e .[eval]``).

Translation: ``{field}`` in our ``template`` becomes Jinja's ``{{field}}``; shared ``choices``
become a literal list; few-shot examples must come from a ``fewshot_path`` file read with the
``first_n`` sampler (the harness draws random examples with its own generator, so ``random``
cannot be reproduced); ``description`` carries over.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from llm.eval.core import EvalDataError, task_file


def _jinja(template: str) -> str:
    if "{{" in template or "}}" in template:
        raise EvalDataError(f"template {template!r}: literal braces cannot be translated to the harness")
    return re.sub(r"\{(\w+)\}", r"{{\1}}", template)


def to_lm_eval(task: Any, prefix: str = "xiulian_") -> dict[str, Any]:
    """The lm-eval task config (a dict to dump as YAML) equivalent to one choice task."""
    if task.type != "choice":
        raise EvalDataError(f"task {task.name}: only choice tasks translate to lm-eval ({task.type} does not)")
    if task.shots and (not task.fewshot_path or task.fewshot_sampler != "first_n"):
        raise EvalDataError(f"task {task.name}: few-shot under the harness needs fewshot_path and fewshot_sampler=first_n")
    files = {"test": str(task_file(task.path).absolute())}
    if task.shots:
        files["train"] = str(task_file(task.fewshot_path).absolute())
    choices = f"{{{{{task.choices_field}}}}}" if not task.choices else json.dumps(list(task.choices), ensure_ascii=False)
    cfg: dict[str, Any] = {
        "task": prefix + task.name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": files},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": _jinja(task.template),
        "doc_to_choice": choices,
        "doc_to_target": f"{{{{{task.answer_field}}}}}",
        "target_delimiter": task.target_delimiter,
        "fewshot_delimiter": task.fewshot_delimiter,
        "num_fewshot": int(task.shots),
        "metric_list": [
            {"metric": "acc", "aggregation": "mean", "higher_is_better": True},
            {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True},
        ],
    }
    if task.description:
        cfg["description"] = task.description
    if task.shots:
        cfg["fewshot_split"] = "train"
        cfg["fewshot_config"] = {"sampler": "first_n"}
    if task.limit is not None:
        raise EvalDataError(f"task {task.name}: limit is ours; pass --limit to lm_eval instead")
    return cfg


def write_tasks(suite: Any, out_dir: Path) -> list[str]:
    """One YAML per translatable task of the suite; returns the lm-eval task names."""
    import yaml

    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for t in suite.tasks:
        try:
            cfg = to_lm_eval(t)
        except EvalDataError as e:
            print(f"skipped: {e}")
            continue
        (out_dir / f"{cfg['task']}.yaml").write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
        names.append(cfg["task"])
    return names


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.eval.harness", description=__doc__.split("\n\n")[0])
    ap.add_argument("suite", help="suite name in conf/eval or a YAML file")
    ap.add_argument("out_dir")
    args = ap.parse_args(argv)
    from llm.eval.suites import load_suite

    names = write_tasks(load_suite(args.suite), Path(args.out_dir))
    print(f"wrote {len(names)} task(s) to {args.out_dir}: {', '.join(names)}")


if __name__ == "__main__":
    main()
