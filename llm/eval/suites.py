"""Evaluation suites (``conf/eval/*.yaml``): loaded and validated, and run on the trained model at
the end of a run."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from llm.eval.core import flat_metrics, run_suite, write_results

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]


def load_suite(name_or_path: str, overrides: list[str] = ()) -> Any:
    """A suite from ``conf/eval/<name>.yaml`` or a YAML path, validated against EvalConfig."""
    from omegaconf import OmegaConf

    from llm.config import EvalConfig

    p = Path(name_or_path)
    if not p.suffix:
        p = ROOT / "conf" / "eval" / f"{name_or_path}.yaml"
    if not p.is_file():
        have = sorted(q.stem for q in (ROOT / "conf" / "eval").glob("*.yaml"))
        raise FileNotFoundError(f"eval suite not found: {p} (suites in conf/eval: {', '.join(have)})")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig), OmegaConf.load(p))
    except Exception as e:  # omegaconf's errors name the key; add the file
        raise ValueError(f"{p}: {e}") from None
    import yaml

    for o in overrides:
        key, sep, value = o.partition("=")
        if not sep:
            raise ValueError(f"--set {o!r}: expected KEY=VALUE (e.g. tasks.0.shots=2)")
        try:
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=True)
        except Exception as e:
            raise ValueError(f"--set {o!r}: {e}") from None
    return cfg


def eval_at_end(suite: Any, stage: str, model: Any, tokenizer: Any, trainer: Any, where: Path) -> dict[str, Any]:
    """The evaluation suite on the trained model: logged as ``eval/<task>/<metric>`` at the last
    step (CSV, W&B) and written to ``eval_results.json`` in the export directory."""
    res = run_suite(model, tokenizer, suite, say=lambda s: log.info("%s", s))
    res.update(stage=stage, global_step=trainer.global_step, model=str(where))
    for lg in trainer.loggers:
        lg.log_metrics(flat_metrics(res), step=trainer.global_step)
        lg.save()
    path = write_results(res, where / "eval_results.json")
    log.info("eval results: %s", path)
    return res
