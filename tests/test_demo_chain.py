"""The README's first command: pretrain -> SFT -> reward model -> PPO on the tiny preset on CPU,
in one command, and the reward of held-out answers rises."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess

import pytest
from conftest import ROOT


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_chains_the_three_stages_and_the_reward_rises():
    run_id = f"test-chain-{os.getpid()}"
    env = {**os.environ, "XIULIAN_RUN_ID": run_id}
    proc = subprocess.Popen(
        ["bash", "launch/demo.sh", "trainer.max_steps=200", "trainer.progress_bar=false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=1700)
        out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    finally:
        if proc.poll() is None:  # timed out: stop the whole chain, not only bash
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for stage in ("pretrain", "sft", "rm", "ppo"):
            shutil.rmtree(ROOT / "outputs" / stage / run_id, ignore_errors=True)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    exports = re.findall(r"^export: (.+)$", out.stdout, re.M)
    assert len(exports) == 4, exports  # pretrain, sft, rm, ppo
    rm = re.search(r"after training: .*val/accuracy=([\d.]+) -> ([\d.]+)", log)
    assert rm and float(rm.group(2)) >= 0.8, rm and rm.group(0)
    ppo = re.search(r"after training: val/reward=([-\d.]+) -> ([-\d.]+)", log)
    assert ppo and float(ppo.group(2)) > float(ppo.group(1)) + 0.1, ppo and ppo.group(0)
