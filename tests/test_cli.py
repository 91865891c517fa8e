"""``xiulian <command>``: one console command over every tool (llm/cli.py)."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llm.cli import BENCHMARKS, COMMANDS, resolve

from conftest import FAST, ROOT


def test_every_command_resolves_to_a_main():
    for name, (module, _) in {**COMMANDS, **{f"bench {k}": v for k, v in BENCHMARKS.items()}}.items():
        fn = getattr(importlib.import_module(module), "main", None)
        assert callable(fn), f"xiulian {name}: {module} has no main()"
    fn, rest, prog = resolve(["bench", "sft", "--quick"])
    assert fn.__module__ == "llm.bench.sft" and rest == ["--quick"] and prog == "xiulian bench sft"
    fn, rest, _ = resolve(["bench", "--quick"])  # no kind: the training benchmark
    assert fn.__module__ == "llm.bench.train" and rest == ["--quick"]


def test_unknown_command_lists_the_commands():
    with pytest.raises(SystemExit) as e:
        resolve(["trian"])
    assert "unknown command 'trian'" in str(e.value) and "train" in str(e.value) and "bench" in str(e.value)
    with pytest.raises(SystemExit) as e:
        resolve(["bench", "nope"])
    assert "unknown benchmark 'nope'" in str(e.value) and "strategies" in str(e.value)


def _xiulian() -> list[str]:
    """The installed console script (pyproject's [project.scripts]), else ``python -m llm``."""
    exe = Path(sys.executable).parent / "xiulian"
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("xiulian")
    return [found] if found else [sys.executable, "-m", "llm"]


@pytest.mark.tier("integration")
def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "xiulian"
    assert exe.is_file(), f"{exe}: no console script; pyproject.toml declares xiulian = llm.cli:main (rerun launch/setup.sh)"
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for name in COMMANDS:
        assert f"  {name} " in out.stdout


@pytest.mark.tier("integration")
def test_subcommands_pass_their_arguments(tmp_path):
    out = subprocess.run([*_xiulian(), "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--max-new-tokens" in out.stdout
    bad = subprocess.run([*_xiulian(), "eval", str(tmp_path / "missing")], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0


def test_xiulian_train_runs_a_stage(tmp_path, demo_data):
    """Hydra reads sys.argv: the overrides after ``xiulian train`` reach it unchanged."""
    env = {**os.environ, "XIULIAN_CACHE": os.environ["XIULIAN_CACHE"], "WANDB_MODE": "offline"}
    cmd = [
        *_xiulian(),
        "train",
        "stage=pretrain",
        "model=tiny",
        "data=demo",
        *FAST,
        "trainer.max_steps=3",
        "trainer.val_every_n_steps=3",
        "eval=none",
        f"run_dir={tmp_path / 'run'}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    export = out.stdout.strip().splitlines()[-1]
    assert export == f"export: {tmp_path / 'run' / 'export'}"
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()


@pytest.mark.tier("integration")
@pytest.mark.parametrize("path", ["/plain/export", "/tmp/check out, it's=(odd)/export", "/x\\y'z", "/ends/with\\"])
def test_hydra_quote_round_trips_paths(path):
    """launch/hydra-quote.sh quotes a path so that Hydra's override parser gives it back unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    quoted = subprocess.run(
        ["bash", "-c", 'source launch/hydra-quote.sh && hydra_quote "$1"', "_", path], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert OverridesParser.create().parse_override(f"model.pretrained={quoted}").value() == path
    if "," in path or "'" in path:  # unquoted, such a path is a syntax error or a list
        from hydra.errors import HydraException

        with pytest.raises((HydraException, AssertionError)):  # a lexer error, or a list instead of the path
            assert OverridesParser.create().parse_override(f"model.pretrained={path}").value() == path
