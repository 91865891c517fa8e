"""``python -m llm.data <config> [key=value ...] [--restart] [--stage S ...]``: run the stage-1
data pipeline (see llm/pipeline/run.py). ``<config>`` is a name in conf/pipeline/ (e.g.
``python_docs``) or a path to a YAML file; overrides are Hydra's, e.g. ``executor=slurm``
(the one switch between the local executor and Slurm array jobs) or ``executor.tasks=8``.
Every key is typed (``llm/pipeline/config.py``): a mistake stops here with a message naming the
key. A rerun resumes: finished tasks are skipped. ``--restart`` discards the previous work dir."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONF = Path(__file__).resolve().parents[2] / "conf" / "pipeline"


def load_config(config: str, overrides: list[str]) -> dict:
    """The pipeline config as a plain dict, validated against ``llm/pipeline/config.py``: a
    misspelt key, a wrong type, a bad choice or a failed cross-field check raises
    :class:`~llm.pipeline.config.PipelineConfigError` naming the key."""
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from llm.pipeline.config import PipelineConfigError, describe, register_pipeline_configs, to_plain

    path = Path(config)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        conf_dir, name = path.resolve().parent, path.stem
        if conf_dir != CONF:
            overrides = [f"hydra.searchpath=[file://{CONF}]", *overrides]
    else:
        conf_dir, name = CONF, config
        if not (CONF / f"{name}.yaml").is_file():
            known = sorted(p.stem for p in CONF.glob("*.yaml"))
            raise SystemExit(f"no pipeline config {config!r}: give a YAML path or one of {known}")
    register_pipeline_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            cfg = compose(config_name=name, overrides=overrides)
    except (HydraException, OmegaConfBaseException, yaml.YAMLError) as e:
        raise PipelineConfigError(f"pipeline config {config!r}: {describe(e)}") from None
    try:
        return to_plain(cfg)
    except PipelineConfigError as e:
        raise PipelineConfigError(f"pipeline config {config!r}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llm.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. executor=slurm executor.tasks=8")
    ap.add_argument("--restart", action="store_true", help="discard the previous run's work dir first")
    ap.add_argument("--stage", action="append", help="run only these stages (and nothing they depend on)")
    args = ap.parse_args(argv)
    from llm.pipeline.config import PipelineConfigError

    try:
        cfg = load_config(args.config, args.overrides)
    except PipelineConfigError as e:
        raise SystemExit(f"python -m llm.data: {e}") from None
    from llm.pipeline.run import run_pipeline

    report = run_pipeline(cfg, restart=args.restart, only=args.stage)
    if report:
        from llm.pipeline.report import summary

        print(json.dumps(summary(report, str(Path(cfg["out"]) / "report")), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
