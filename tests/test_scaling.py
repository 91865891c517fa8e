"""Scaling laws: the fit recovers a known law, the compute-optimal split is the true minimum,
and the sweep runs tiny sizes on CPU end to end into a plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llm.eval.scaling import Law, fit_law, grid, main

CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)


def synthetic(law: Law, noise: float = 0.0, seed: int = 0):
    N, D = np.meshgrid(np.geomspace(1e7, 1e10, 6), np.geomspace(1e9, 1e12, 6))
    N, D = N.ravel(), D.ravel()
    L = law.predict(N, D) * np.exp(np.random.default_rng(seed).normal(0, noise, N.shape))
    return N, D, L


@pytest.mark.tier("integration")  # the real fit: L-BFGS from 4,500 starts, ~30 s
def test_fit_recovers_chinchilla_exponents():
    fit = fit_law(*synthetic(CHINCHILLA))
    assert fit.alpha == pytest.approx(0.34, abs=0.01) and fit.beta == pytest.approx(0.28, abs=0.01)
    assert fit.E == pytest.approx(1.69, abs=0.02)


@pytest.mark.tier("integration")  # the real fit: L-BFGS from 4,500 starts, ~30 s
def test_fit_with_noise_and_other_exponents():
    """0.3% multiplicative noise on every loss (about what seeds give a real sweep)."""
    truth = Law(E=1.8, A=1000.0, B=2000.0, alpha=0.4, beta=0.3)
    fit = fit_law(*synthetic(truth, noise=0.003, seed=1))
    assert fit.alpha == pytest.approx(0.4, abs=0.02) and fit.beta == pytest.approx(0.3, abs=0.01)
    N, D, L = synthetic(truth)
    assert np.abs(fit.predict(N, D) / L - 1).max() < 0.01  # the fitted surface is within 1%


def test_compute_optimal_is_the_minimum_on_the_budget():
    C = 5.76e23  # Chinchilla's budget
    n, d = CHINCHILLA.compute_optimal(C)
    assert 6 * n * d == pytest.approx(C, rel=1e-9)
    grid_n = np.geomspace(n / 30, n * 30, 4001)
    losses = CHINCHILLA.predict(grid_n, C / (6 * grid_n))
    assert grid_n[losses.argmin()] == pytest.approx(n, rel=0.01)
    # with these (approach-3) constants the paper's own fit puts Chinchilla's budget at ~40B params
    assert 2e10 < n < 8e10


def test_fit_needs_five_points():
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_law([1e6, 1e7], [1e9, 1e9], [3.0, 2.5])


def test_grid_numbering_matches_multirun_order():
    g = grid([32, 64], [10, 20], [1])
    assert [x[1].split("=")[1] + "/" + x[3].split("=")[1] for x in g] == ["32/10", "32/20", "64/10", "64/20"]


@pytest.mark.tier("integration")
def test_tiny_sweep_on_cpu_fits_and_plots(tmp_path, demo_data):
    """Hydra multirun over 3 widths x 3 budgets, then the fit, the plot and the suggestion."""
    out = tmp_path / "sweep"
    fast = ["data.vocab_size=1024", "data.seq_len=64", "model.max_seq_len=64", "data.num_workers=0", "logger=csv"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm.eval.scaling",
            "sweep",
            "--widths",
            "16,32,64",
            "--steps",
            "30,60,120",
            "--layers",
            "2",
            "--out",
            str(out),
            *fast,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(out.glob("L2_d*_s*/export/xiulian.json"))) == 9
    res = main(["fit", str(out), "--budget", "1e12"])
    assert len(res["runs"]) == 9
    png = out / "scaling.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    law = Law(**res["law"])
    # more data and more parameters lower the loss, on the runs and in the fit
    by = {(x["n_embd"], x["D"]): x["loss"] for x in res["runs"]}
    for w in (16, 32, 64):
        ds = sorted(d for (ww, d) in by if ww == w)
        assert by[(w, ds[0])] > by[(w, ds[-1])]
    assert law.alpha > 0 and law.beta > 0
    pred = np.array([law.predict(x["N"], x["D"]) for x in res["runs"]])
    assert np.abs(pred / np.array([x["loss"] for x in res["runs"]]) - 1).max() < 0.05
    opt = res["compute_optimal"]
    assert 6 * opt["N"] * opt["D"] == pytest.approx(1e12, rel=1e-6)
    assert json.loads((out / "scaling.json").read_text())["law"] == res["law"]


@pytest.mark.tier("integration")
def test_array_task_runs_one_grid_point(tmp_path):
    cmd = main(["sweep", "--widths", "16,32", "--steps", "10,20", "--layers", "1", "--out", str(tmp_path), "--task", "3", "--print"])
    assert "model.n_embd=32" in cmd and "trainer.max_steps=20" in cmd and f"run_dir={tmp_path / 'L1_d32_s20'}" in cmd
    with pytest.raises(SystemExit, match="grid has 4 points"):
        main(["sweep", "--widths", "16,32", "--steps", "10,20", "--layers", "1", "--task", "4", "--print"])
    assert Path("slurm/scaling.sh").read_text().count("SLURM_ARRAY_TASK_ID") == 1
