"""Scaling laws: sweep model sizes and token budgets, fit L(N, D), plot, suggest a compute-optimal size.

    # 1. the sweep: one pretraining run per (size, budget), by Hydra multirun (locally, in turn)
    python -m llm.eval.scaling sweep --widths 32,64,128 --steps 60,120,240 --out outputs/scaling
    #    ... or the same grid as a Slurm array job, one run per task:
    sbatch --array=0-8 slurm/scaling.sh --widths 32,64,128 --steps 60,120,240 --out outputs/scaling
    # 2. the fit, the plot and a compute-optimal suggestion
    python -m llm.eval.scaling fit outputs/scaling --budget 1e18 [--wandb]

The law is Chinchilla's (Hoffmann et al. 2022, approach 3)::

    L(N, D) = E + A / N^alpha + B / D^beta

N = non-embedding parameters (``--params total`` counts all), D = training tokens, L = the final
held-out loss (``val/loss`` at the last step). The fit minimises the Huber loss (delta 1e-3) of
``log L_fit - log L`` over ``(log A, log B, log E, alpha, beta)`` by L-BFGS from a grid of
starting points, as the paper does. With compute C = 6 N D, minimising L gives::

    N_opt = G (C/6)^(beta/(alpha+beta)),  D_opt = (C/6)^(alpha/(alpha+beta)) / G,
    G = (alpha A / (beta B))^(1/(alpha+beta))

The plot shows every run's loss against its compute, each size as a line, and the fitted
frontier ``min_N L(N, C/6N)``; it is written to ``scaling.png`` and logged to W&B with ``--wandb``.
Fits on tiny CPU models are illustrations of the machinery, not predictions: the exponents of a
real law need sizes spread over orders of magnitude (see docs/evaluation.md, "Scaling laws").
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Law:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    loss: float = float("nan")
    """The fit's objective at the optimum (mean Huber loss of the log residuals)."""

    def predict(self, N: Any, D: Any) -> Any:
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, flops: float) -> tuple[float, float]:
        """(N, D) minimising L subject to 6 N D = flops."""
        a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        return G * (flops / 6) ** a, (flops / 6) ** b / G

    def frontier(self, flops: Any) -> Any:
        """The lowest loss reachable with each compute budget."""
        out = []
        for c in np.atleast_1d(flops):
            n, d = self.compute_optimal(float(c))
            out.append(float(self.predict(n, d)))
        return np.array(out)


def fit_law(N: Sequence[float], D: Sequence[float], L: Sequence[float], delta: float = 1e-3, grid: dict | None = None) -> Law:
    """Chinchilla's approach-3 fit: Huber loss on log residuals, L-BFGS from a grid of starts
    (all starts optimised together as one batch; the best is then refined alone)."""
    logN = torch.tensor(np.log(np.asarray(N, dtype=float)), dtype=torch.float64)
    logD = torch.tensor(np.log(np.asarray(D, dtype=float)), dtype=torch.float64)
    logL = torch.tensor(np.log(np.asarray(L, dtype=float)), dtype=torch.float64)
    if len(logL) < 5:
        raise ValueError(f"fitting 5 parameters needs at least 5 runs, got {len(logL)}")
    g = grid or {
        "alpha": [0.0, 0.5, 1.0, 1.5, 2.0],
        "beta": [0.0, 0.5, 1.0, 1.5, 2.0],
        "e": [-1.0, -0.5, 0.0, 0.5, 1.0],
        "a": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
        "b": [0.0, 5.0, 10.0, 15.0, 20.0, 25.0],
    }
    starts = torch.tensor(list(itertools.product(g["a"], g["b"], g["e"], g["alpha"], g["beta"])), dtype=torch.float64)

    def objective(p: torch.Tensor) -> torch.Tensor:  # p: (k, 5) -> (k,)
        a, b, e, al, be = p.unbind(-1)
        terms = torch.stack([a[:, None] - al[:, None] * logN, b[:, None] - be[:, None] * logD, e[:, None].expand(-1, len(logN))])
        r = torch.logsumexp(terms, dim=0) - logL
        return torch.nn.functional.huber_loss(r, torch.zeros_like(r), delta=delta, reduction="none").mean(-1)

    scale = 1.0 / delta**2  # near the optimum the Huber loss is r^2/2 with r << delta: rescale it

    def run(p0: torch.Tensor, iters: int) -> torch.Tensor:
        p = p0.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([p], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe", tolerance_grad=1e-10, tolerance_change=1e-16)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            v = objective(p).sum() * scale
            v.backward()
            return v

        opt.step(closure)
        return p.detach()

    def finite(v: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.isfinite(v), v, torch.full_like(v, float("inf")))

    p = run(starts, 100)  # all starts at once: a coarse descent
    vals = finite(objective(p))
    cands = []
    for i in vals.argsort()[:8].tolist():  # the best few, each refined alone
        q = p[i][None]
        for _ in range(3):
            q = run(q, 500)
        cands.append(q[0])
    best = min(cands, key=lambda q: float(finite(objective(q[None]))[0]))
    a, b, e, al, be = best.tolist()
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=al, beta=be, loss=float(objective(best[None])[0]))


# ============================================================================ runs
@dataclass
class Run:
    path: str
    N: float
    D: float
    loss: float
    n_layer: int
    n_embd: int
    total_params: float

    @property
    def flops(self) -> float:
        return 6 * self.N * self.D


def read_runs(root: Path, params: str = "non_embedding") -> list[Run]:
    """Every finished pretraining run under ``root`` (a directory with ``export/xiulian.json``
    and ``config.yaml``): its parameters, tokens seen and final ``val/loss``."""
    runs, skipped = [], []
    for meta in sorted(Path(root).rglob("export/xiulian.json")):
        run_dir = meta.parent.parent
        info = json.loads(meta.read_text())
        loss = info.get("metrics", {}).get("val/loss")
        if loss is None or not math.isfinite(loss):
            skipped.append(f"{run_dir}: no final val/loss (set trainer.val_every_n_steps to max_steps)")
            continue
        hf = json.loads((meta.parent / "config.json").read_text())
        total = _count_from_safetensors(meta.parent)
        emb = hf["vocab_size"] * hf["hidden_size"] * (1 if hf.get("tie_word_embeddings") else 2)
        N = total if params == "total" else total - emb
        runs.append(
            Run(str(run_dir), float(N), float(info["tokens_seen"]), float(loss), hf["num_hidden_layers"], hf["hidden_size"], float(total))
        )
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    return runs


def _count_from_safetensors(export: Path) -> int:
    from safetensors import safe_open

    n = 0
    for f in sorted(export.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                n += int(np.prod(st.get_slice(k).get_shape()))
    return n


def plot(runs: list[Run], law: Law, path: Path, budget: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    sizes = sorted({r.N for r in runs})
    cmap = plt.get_cmap("viridis")
    for i, n in enumerate(sizes):
        rs = sorted((r for r in runs if r.N == n), key=lambda r: r.flops)
        color = cmap(i / max(1, len(sizes) - 1))
        ax.plot([r.flops for r in rs], [r.loss for r in rs], "o-", color=color, label=f"N={n:,.0f}")
        cs = np.geomspace(min(r.flops for r in rs), max(r.flops for r in rs), 30)
        ax.plot(cs, law.predict(n, cs / (6 * n)), ":", color=color, alpha=0.7)
    lo, hi = min(r.flops for r in runs), max(r.flops for r in runs)
    if budget:
        hi = max(hi, budget)
    cs = np.geomspace(lo / 2, hi * 2, 100)
    ax.plot(cs, law.frontier(cs), "k--", lw=1.5, label="fitted frontier")
    if budget:
        n, d = law.compute_optimal(budget)
        ax.plot([budget], law.predict(n, d), "r*", ms=12, label=f"optimal at C={budget:.1e}: N={n:.2e}, D={d:.2e}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training compute C = 6ND (FLOPs)")
    ax.set_ylabel("held-out loss (nats/token)")
    ax.set_title(f"L = {law.E:.2f} + {law.A:.3g}/N^{law.alpha:.2f} + {law.B:.3g}/D^{law.beta:.2f}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ============================================================================ sweep
def grid(widths: Sequence[int], steps: Sequence[int], layers: Sequence[int], heads: int = 4) -> list[list[str]]:
    """Hydra overrides of each run of the grid (sizes x budgets), in Hydra's multirun order."""
    return [
        [f"model.n_layer={nl}", f"model.n_embd={w}", f"model.n_head={heads}", f"trainer.max_steps={s}"]
        for nl, w, s in itertools.product(layers, widths, steps)
    ]


#: every run of a sweep: validation on the last step only (its val/loss is the point's loss)
SWEEP_FIXED = [
    "stage=pretrain",
    "trainer.val_every_n_steps=${trainer.max_steps}",
    "trainer.ckpt_every_n_steps=0",
    "trainer.progress_bar=false",
    "stage.sample_prompts=[]",
    "eval=none",
    "data.val_batches=16",
    "stage.optim.warmup_steps=10",
]
SUBDIR = "L${model.n_layer}_d${model.n_embd}_s${trainer.max_steps}"


def sweep_command(
    widths: Sequence[int], steps: Sequence[int], layers: Sequence[int], out: str, extra: Sequence[str] = (), heads: int = 4
) -> list[str]:
    """One Hydra multirun over the grid (the basic launcher runs the jobs in turn; a Hydra
    launcher plugin such as submitit runs them as cluster jobs)."""
    return [
        sys.executable,
        "-m",
        "llm.train",
        "-m",
        *SWEEP_FIXED,
        *extra,
        f"model.n_layer={','.join(map(str, layers))}",
        f"model.n_embd={','.join(map(str, widths))}",
        f"model.n_head={heads}",
        f"trainer.max_steps={','.join(map(str, steps))}",
        f"hydra.sweep.dir={out}",
        f"hydra.sweep.subdir={SUBDIR}",
    ]


def main(argv: list[str] | None = None) -> Any:
    ap = argparse.ArgumentParser(
        prog="python -m llm.eval.scaling",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    sw = sub.add_parser("sweep", help="pretrain every (size, budget) of the grid")
    sw.add_argument("--widths", default="32,64,128", help="model.n_embd values (comma-separated)")
    sw.add_argument("--layers", default="2", help="model.n_layer values")
    sw.add_argument("--steps", default="60,120,240", help="trainer.max_steps values (token budgets)")
    sw.add_argument("--heads", type=int, default=4, help="model.n_head (must divide every width)")
    sw.add_argument("--out", default="outputs/scaling")
    sw.add_argument("--task", type=int, default=None, help="run only grid point K (a Slurm array task: $SLURM_ARRAY_TASK_ID)")
    sw.add_argument("--print", action="store_true", help="print the command(s) and exit")
    sw.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (data=..., data.seq_len=...)")
    ft = sub.add_parser("fit", help="fit L(N, D) to the finished runs, plot, suggest a compute-optimal size")
    ft.add_argument("root", help="the sweep directory")
    ft.add_argument("--budget", type=float, default=None, help="a FLOP budget for the compute-optimal suggestion")
    ft.add_argument("--params", choices=["non_embedding", "total"], default="non_embedding")
    ft.add_argument("--out", default=None, help="where to write scaling.png and scaling.json (default: root)")
    ft.add_argument("--wandb", action="store_true")
    args = ap.parse_args(argv)

    if args.cmd == "sweep":
        widths = [int(x) for x in args.widths.split(",")]
        steps = [int(x) for x in args.steps.split(",")]
        layers = [int(x) for x in args.layers.split(",")]
        if args.task is not None:
            points = grid(widths, steps, layers, args.heads)
            if not 0 <= args.task < len(points):
                sys.exit(f"--task {args.task}: the grid has {len(points)} points (0..{len(points) - 1})")
            o = points[args.task]
            name = "L{}_d{}_s{}".format(*(x.split("=")[1] for x in (o[0], o[1], o[3])))
            cmd = [sys.executable, "-m", "llm.train", *SWEEP_FIXED, *o, *args.overrides, f"run_dir={Path(args.out) / name}"]
        else:
            cmd = sweep_command(widths, steps, layers, args.out, args.overrides, args.heads)
        print(shlex.join(cmd), flush=True)
        bad = [w for w in widths if w % args.heads]
        if bad:
            sys.exit(f"--heads {args.heads} does not divide widths {bad}")
        if args.print:
            return cmd
        return subprocess.run(cmd, check=True)

    runs = read_runs(Path(args.root), args.params)
    if not runs:
        sys.exit(f"no finished runs under {args.root}")
    law = fit_law([r.N for r in runs], [r.D for r in runs], [r.loss for r in runs])
    out = Path(args.out or args.root)
    png = plot(runs, law, out / "scaling.png", args.budget)
    res: dict[str, Any] = {"law": asdict(law), "params": args.params, "runs": [asdict(r) for r in runs]}
    print(
        f"{len(runs)} runs; fit: L = {law.E:.3f} + {law.A:.4g}/N^{law.alpha:.3f} + {law.B:.4g}/D^{law.beta:.3f} (objective {law.loss:.2e})"
    )
    print(f"{'N':>10} {'D':>10} {'C':>9} {'loss':>7} {'fit':>7}")
    for r in sorted(runs, key=lambda r: (r.N, r.D)):
        print(f"{r.N:>10,.0f} {r.D:>10,.0f} {r.flops:>9.2e} {r.loss:>7.4f} {float(law.predict(r.N, r.D)):>7.4f}")
    if args.budget:
        n, d = law.compute_optimal(args.budget)
        res["compute_optimal"] = {"flops": args.budget, "N": n, "D": d, "tokens_per_param": d / n, "loss": float(law.predict(n, d))}
        print(
            f"compute-optimal for C = {args.budget:.3g} FLOPs: N = {n:.3g} parameters, D = {d:.3g} tokens "
            f"({d / n:.1f} tokens per parameter), predicted loss {float(law.predict(n, d)):.3f}"
        )
    (out / "scaling.json").write_text(json.dumps(res, indent=2))
    print(f"plot: {png}\nfit: {out / 'scaling.json'}")
    if args.wandb:
        import wandb

        from llm.loggers import wandb_mode

        run = wandb.init(
            project="xiulian", job_type="scaling", mode=wandb_mode("auto"), config={"root": str(args.root), "params": args.params}
        )
        table = wandb.Table(
            columns=["N", "D", "C", "loss", "fit"], data=[[r.N, r.D, r.flops, r.loss, float(law.predict(r.N, r.D))] for r in runs]
        )
        run.log({"scaling/plot": wandb.Image(str(png)), "scaling/runs": table})
        run.summary.update({f"scaling/{k}": v for k, v in asdict(law).items()})
        run.finish()
    return res


if __name__ == "__main__":
    main()
