"""Callbacks: sampled continuations during training, and the data report at the end."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from llm.model.engine import generate_text
from llm.procstat import proc_status

log = logging.getLogger(__name__)


class SampleText(L.Callback):
    """Every ``every_n_steps`` optimizer steps, rank 0 continues a few prompts greedily and logs
    them (console, ``samples.txt`` in the run directory, a W&B table when W&B is on)."""

    def __init__(self, every_n_steps: int, prompts: list[str], max_new_tokens: int, chat: bool = False) -> None:
        self.chat = chat
        self.every = every_n_steps
        self.prompts = prompts
        self.max_new_tokens = max_new_tokens
        self.rows: list[list[Any]] = []

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if not self.every or not self.prompts or step % self.every or not trainer.is_global_zero:
            return
        texts = generate_text(module.model, module.tokenizer, self.prompts, self.max_new_tokens, chat=self.chat)
        lines = [f"[step {step}] {p!r} -> {t!r}" for p, t in zip(self.prompts, texts)]
        for line in lines:
            log.info(line)
        with open(Path(trainer.default_root_dir) / "samples.txt", "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        self.rows += [[step, p, t] for p, t in zip(self.prompts, texts)]
        for lg in trainer.loggers:
            if type(lg).__name__ == "WandbLogger":
                lg.log_text(key="samples", columns=["step", "prompt", "continuation"], data=self.rows, step=step)


class DataReport(L.Callback):
    """Tells the data module when an epoch starts, and reports skipped shards at the end."""

    def on_train_epoch_start(self, trainer: L.Trainer, module: Any) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "on_epoch_start"):
            dm.on_epoch_start(trainer.current_epoch)

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        dm = trainer.datamodule
        skipped = getattr(dm, "skipped_shards", None)
        if skipped and trainer.is_global_zero:
            log.warning("data: %d corrupt shard(s) were skipped: %s", len(skipped), ", ".join(map(str, skipped)))
            for lg in trainer.loggers:
                lg.log_metrics({"data/skipped_shards": float(len(skipped))}, step=trainer.global_step)


class CrashAtStep(L.Callback):
    """Fault injection: SIGKILL this process (no clean-up, no checkpoint) when ``step`` begins."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class ProgressBar(RichProgressBar):
    """Rich progress bar with ETA; the description counts optimizer steps toward max_steps."""

    def _get_train_description(self, current_epoch: int) -> str:
        max_steps = self.trainer.max_steps
        return f"Epoch {current_epoch}" + (f" (to step {max_steps})" if max_steps and max_steps > 0 else "")


class EvalSuite(L.Callback):
    """Every ``suite.every_n_steps`` optimizer steps, rank 0 runs the evaluation suite (conf/eval)
    and logs ``eval/<task>/<metric>``; the other ranks wait at a barrier. The final evaluation,
    written to ``eval_results.json`` beside the export, is run by ``llm.train`` after training."""

    def __init__(self, suite: Any) -> None:
        self.suite = suite

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        every = self.suite.every_n_steps
        step = trainer.global_step
        if not every or not self.suite.tasks or step % every or getattr(self, "_last", None) == step:
            return
        self._last = step
        if trainer.is_global_zero:
            from llm.eval.core import flat_metrics, run_suite

            res = run_suite(module.model, module.tokenizer, self.suite, say=lambda s: log.info("[step %d] %s", step, s))
            for lg in trainer.loggers:
                lg.log_metrics(flat_metrics(res), step=step)
        trainer.strategy.barrier("eval")


class Preemption(L.Callback):
    """Graceful preemption and time limits: when ``flag`` appears (slurm/stage.sh creates it when
    Slurm signals the batch shell, ``#SBATCH --signal=B:USR1@N``), every rank learns it from rank 0
    at the end of the step, a checkpoint of that step is written, and training stops; the shell
    then requeues the job, which resumes from that checkpoint (``ckpt_path=last``)."""

    def __init__(self, flag: str) -> None:
        self.flag = flag
        self.preempted_at: int | None = None

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        seen = os.path.exists(self.flag) if trainer.is_global_zero else False
        if trainer.world_size > 1:
            seen = bool(trainer.strategy.broadcast(seen, src=0))
        if not seen or self.preempted_at is not None:
            return
        step = trainer.global_step
        path = Path(trainer.default_root_dir) / "checkpoints" / f"step{step:07d}.ckpt"
        if not path.exists():
            trainer.save_checkpoint(path, weights_only=False)
        self.preempted_at = step
        trainer.should_stop = True
        if trainer.is_global_zero:
            log.warning("preemption signalled (%s): checkpoint %s written at step %d, stopping", self.flag, path, step)
            Path(self.flag + ".saved").write_text(f"{step}\n")  # tells slurm/stage.sh to requeue


class StateMemory(L.Callback):
    """``trainer.memory_report=true``: at the optimizer step of ``step`` (the second, when Adam's
    state exists), every rank counts the bytes it holds in parameters, gradients, optimizer state
    and other tensors (``llm.strategy.state_bytes``), and over that whole training step (forward,
    backward, optimizer) its peak resident memory: the kernel's peak mark is reset when the step
    starts (``/proc/self/clear_refs``), ``rss_before_step`` and the bytes of all live tensors
    (``tensors_before_step``) are read then, and ``rss_step_peak`` (``VmHWM``) when it ends (the RSS
    figures are absent where ``/proc`` does not allow them). Rank 0 writes all ranks'
    figures to ``memory_per_rank.json`` in the run directory, logs them and sends ``memory/*``
    (rank 0's) to the loggers."""

    def __init__(self, strategy_name: str, step: int = 1) -> None:
        self.strategy_name = strategy_name
        self.step = step
        self.report: dict | None = None
        self._mine: dict | None = None
        self._rss_before: int | None = None
        self._tensors_before = 0

    def on_train_batch_start(self, trainer: L.Trainer, module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step and self._rss_before is None and self.report is None:
            import torch

            from llm.strategy import state_bytes

            opt = trainer.optimizers[0] if trainer.optimizers else None
            self._tensors_before = state_bytes(trainer.strategy, module, opt)["total"]
            if isinstance(getattr(trainer.strategy, "model", None), torch.nn.parallel.DistributedDataParallel):
                # DDP's reducer keeps its gradient buckets (gradient_as_bucket_view: as large as the
                # gradients) in C++, out of gc's sight, while the gradients are None between steps
                self._tensors_before += sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad and p.grad is None)
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
                self._rss_before = proc_status().get("VmRSS")
            except OSError:
                self._rss_before = None

    def on_before_optimizer_step(self, trainer: L.Trainer, module: Any, optimizer: Any) -> None:
        if trainer.global_step != self.step or self._mine is not None:
            return
        import torch

        from llm.strategy import state_bytes

        mine = state_bytes(trainer.strategy, module, optimizer)
        if torch.cuda.is_available() and module.device.type == "cuda":
            mine["cuda_allocated"] = int(torch.cuda.memory_allocated(module.device))
            mine["cuda_peak"] = int(torch.cuda.max_memory_allocated(module.device))
        self._mine = mine

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._mine is None or self.report is not None:
            return
        import json

        mine = dict(self._mine)
        if self._rss_before is not None:
            mine["rss_before_step"] = self._rss_before
            mine["tensors_before_step"] = self._tensors_before
            mine["rss_step_peak"] = proc_status().get("VmHWM", 0)
        ranks = [mine]
        if trainer.world_size > 1:
            import torch.distributed as dist

            ranks = [None] * trainer.world_size
            dist.all_gather_object(ranks, mine)
        self.report = {"strategy": self.strategy_name, "world_size": trainer.world_size, "step": self.step, "ranks": ranks}
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / "memory_per_rank.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.report, indent=1))
            os.replace(tmp, path)
            mib = {k: round(v / 2**20, 1) for k, v in mine.items()}
            log.info("memory of rank 0 (MiB, %s, %d ranks): %s", self.strategy_name, trainer.world_size, mib)
            for lg in trainer.loggers:
                lg.log_metrics({f"memory/{k}_mib": float(v) for k, v in mib.items()}, step=trainer.global_step)


def build_callbacks(cfg: Any, stage: Any, placement: Any, run_dir: Path) -> tuple[list, Any, Preemption | None]:
    """(callbacks, the checkpoint callback or None, the preemption callback or None) of a run."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    tc, st = cfg.trainer, cfg.stage
    callbacks: list = [DataReport()]
    if stage.samples_during_training and not placement.param_sharded:
        callbacks.append(SampleText(st.sample_every_n_steps, list(st.sample_prompts), st.sample_max_new_tokens, chat=stage.chat))
    elif stage.samples_during_training and st.sample_every_n_steps and st.sample_prompts:
        log.info(
            "strategy=%s: no samples during training (each rank holds a shard of the weights); the samples at the end "
            "come from the consolidated model",
            cfg.strategy.name,
        )
    ckpt = None
    if tc.ckpt_every_n_steps > 0 and not tc.fast_dev_run:
        ckpt = _keep_newest(ModelCheckpoint)(
            dirpath=run_dir / "checkpoints",
            filename="step{step:07d}",
            auto_insert_metric_name=False,
            every_n_train_steps=tc.ckpt_every_n_steps,
            save_top_k=tc.ckpt_keep,
            monitor="step",
            mode="max",
            save_last=False,
        )
        callbacks.append(ckpt)
    if cfg.eval.tasks and cfg.eval.every_n_steps > 0:
        callbacks.append(EvalSuite(cfg.eval))
    if tc.memory_report:
        callbacks.append(StateMemory(cfg.strategy.name))
    if tc.crash_at_step is not None:
        callbacks.append(CrashAtStep(tc.crash_at_step))
    preempt = None
    if os.environ.get("XIULIAN_PREEMPT_FILE"):  # set by slurm/stage.sh: the flag its USR1 trap creates
        preempt = Preemption(os.environ["XIULIAN_PREEMPT_FILE"])
        callbacks.append(preempt)
    if tc.progress_bar:
        callbacks.append(ProgressBar(leave=True))
    return callbacks, ckpt, preempt


def _keep_newest(base: type) -> type:
    """Lightning's ModelCheckpoint, which also keeps ``save_top_k`` across resumes: after each
    save, every finished checkpoint in its folder but the newest ``save_top_k`` is removed (the
    one a run resumed from, and those before it, were unknown to the new process)."""

    class KeepNewest(base):
        def _save_checkpoint(self, trainer: Any, filepath: str) -> None:
            super()._save_checkpoint(trainer, filepath)
            self.prune(trainer)

        def prune(self, trainer: Any) -> None:
            """Remove all but the newest ``save_top_k`` finished checkpoints of the folder. Rank 0
            lists the folder and every rank forgets the same ones: a rank that listed it after rank
            0 had removed some would keep them in ``best_k_models``, and Lightning's next top-k
            decision (a collective only when ``save_top_k`` are known) would then differ between
            ranks and hang them (seen after a resume from a preemption checkpoint)."""
            if self.save_top_k < 0 or not self.dirpath:
                return
            from llm.rundir import checkpoints

            strategy = trainer.strategy
            strategy.barrier("prune checkpoints")  # every rank's shards of the newest are in place
            old = [str(p) for _, p in checkpoints(Path(self.dirpath))[self.save_top_k :]] if strategy.is_global_zero else None
            for path in strategy.broadcast(old, src=0):
                self.best_k_models.pop(path, None)
                strategy.remove_checkpoint(path)  # rank 0 removes; directories whole

        def _remove_checkpoint(self, trainer: Any, filepath: str) -> None:
            if os.path.exists(filepath):  # pruning may have removed it already
                super()._remove_checkpoint(trainer, filepath)

    return KeepNewest
