"""The README's first command: pretrain -> SFT -> reward model -> PPO on the tiny preset on CPU,
in one command, and the reward of held-out answers rises; run from a checkout whose path holds
characters Hydra's override syntax reads (each export path is handed to the next stage)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT

#: a checkout path with what Hydra's override syntax gives a meaning to: a space, a comma (a list),
#: a quote, '=' and parentheses; each stage's export path, passed to the next, contains it
ODD_DIR = "check out, it's=(odd)"


def _copy_checkout(dest: Path) -> Path:
    """The tracked files of this checkout copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dest / f)
    return dest


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_chains_the_three_stages_and_the_reward_rises(tmp_path):
    root = _copy_checkout(tmp_path / ODD_DIR)
    run_id = f"test-chain-{os.getpid()}"
    # this environment is set up: the copy's python3 -m llm.* imports the copy's code (cwd first)
    env = {**os.environ, "XIULIAN_RUN_ID": run_id, "XIULIAN_SKIP_SETUP": "1"}
    proc = subprocess.Popen(
        ["bash", "launch/demo.sh", "trainer.max_steps=200", "trainer.progress_bar=false"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1700)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        if proc.poll() is None:  # timed out: stop the whole chain, not only bash
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    exports = re.findall(r"^export: (.+)$", out.stdout, re.M)
    assert len(exports) == 4, exports  # pretrain, sft, rm, ppo
    assert all(e.startswith(str(root / "outputs")) for e in exports), exports  # each read the odd path back
    rm = re.search(r"after training: .*val/accuracy=([\d.]+) -> ([\d.]+)", log)
    assert rm and float(rm.group(2)) >= 0.8, rm and rm.group(0)
    ppo = re.search(r"after training: val/reward=([-\d.]+) -> ([-\d.]+)", log)
    assert ppo and float(ppo.group(2)) > float(ppo.group(1)) + 0.1, ppo and ppo.group(0)
