"""Rollout engines behind one interface: what PPO and GRPO sample their answers with
(``stage.rollout.engine``, :class:`llm.config.RolloutConfig`).

A :class:`RolloutEngine` answers left-padded prompts and returns, with the new tokens, the
log-prob it sampled each with (at the sampling temperature), so that the stage can compare them
with the trainer's own (:mod:`llm.rl.mismatch`). Around the policy's training it is told:

* ``sync_weights(model)`` after each iteration's optimizer steps (and at the start of a fit): the
  engine generates with the policy's current weights from then on;
* ``wake()`` before generating and ``sleep()`` after: an engine that holds memory of its own
  (vLLM's weights and KV cache) releases it while the policy trains.

Engines:

* :class:`HFEngine` (``hf``) -- the one generation engine of the project
  (:class:`llm.model.engine.Engine`, transformers' ``generate`` with a KV cache) on the policy
  itself: no second copy, nothing to sync or release. Its log-probs are taken from the logits
  ``generate`` computes anyway, by a logits processor that keeps one step's log-softmax at a time
  (``B x V`` floats, not ``generate``'s ``output_logits`` of every step).
* :class:`VLLMEngine` (``vllm``) -- a vLLM ``LLM`` on the same GPU as the policy (colocated),
  sleeping while the policy trains and reloaded from it after each iteration; optional
  (``pip install -e .[vllm]``), CUDA only.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any, Protocol, runtime_checkable

import torch

from llm.model.engine import Engine, Sampling

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm")


@runtime_checkable
class RolloutEngine(Protocol):
    """What PPO and GRPO need of a rollout engine."""

    name: str

    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: Sampling, logprobs: bool = True, **extra: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(new tokens [B, R], right-padded with the pad id; the log-prob [B, R] of each at
        ``sampling.temperature`` (0 on padding), or ``None`` when ``logprobs`` is off) for
        left-padded prompts [B, P] (``prompt_mask`` 1 on prompt tokens)."""
        ...

    def sync_weights(self, model: Any) -> None:
        """Generate with ``model``'s current weights from now on (called after each iteration)."""
        ...

    def sleep(self) -> None:
        """Release the engine's own memory while the policy trains."""
        ...

    def wake(self) -> None:
        """Take it back before generating."""
        ...


def tis_enabled(rcfg: Any) -> bool:
    """Whether truncated importance sampling applies under ``stage.rollout`` ``rcfg``:
    ``tis`` when set, else on for vLLM only (and never without the log-prob check)."""
    if rcfg.tis is not None:
        return bool(rcfg.tis)
    return str(rcfg.engine) == "vllm" and bool(rcfg.logprob_check)


# ------------------------------------------------------------------------------------ hf
class SampledLogprobs:
    """A transformers logits processor that records the log-prob of each sampled token at
    ``temperature``, from the logits ``generate`` computed for it; it changes no score.

    ``generate`` puts the processors it is given before its sampling warpers (temperature, top-k,
    top-p), so the scores seen here are the model's logits (as float32): the log-prob is
    ``log_softmax(logits / temperature)`` at the token, what the trainer recomputes
    (``RolloutStage.response_logprobs``). Step t's token is known at step t + 1 (the last
    column of ``input_ids``); the last step's in :meth:`finish`."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.prev: torch.Tensor | None = None  # [B, V] the last step's log-softmax
        self.steps: list[torch.Tensor] = []  # [B] per step

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.prev is not None:
            self.steps.append(self.prev.gather(1, input_ids[:, -1:]).squeeze(1))
        self.prev = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def finish(self, new_tokens: torch.Tensor) -> torch.Tensor:
        """Log-probs [B, R] of the ``new_tokens`` [B, R] ``generate`` returned."""
        R = new_tokens.shape[1]
        if self.prev is not None and len(self.steps) < R:
            self.steps.append(self.prev.gather(1, new_tokens[:, len(self.steps) : len(self.steps) + 1]).squeeze(1))
        self.prev = None
        if len(self.steps) != R:
            raise RuntimeError(f"rollout log-probs: recorded {len(self.steps)} steps for {R} new tokens")
        if not R:
            return new_tokens.new_zeros(new_tokens.shape, dtype=torch.float32)
        return torch.stack(self.steps, 1)


class HFEngine:
    """Rollouts through the project's one generation engine on the policy itself."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, chat: bool = True) -> None:
        self.model, self.tokenizer, self.chat = model, tokenizer, chat

    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: Sampling, logprobs: bool = True, **extra: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        engine = Engine(self.model, self.tokenizer, chat=self.chat)
        if not logprobs:
            return engine.generate(prompt_ids, prompt_mask, sampling, **extra), None
        from transformers import LogitsProcessorList

        rec = SampledLogprobs(sampling.temperature)
        new = engine.generate(prompt_ids, prompt_mask, sampling, logits_processor=LogitsProcessorList([rec]), **extra)
        return new, rec.finish(new)

    def sync_weights(self, model: Any) -> None:
        self.model = model  # the policy itself: nothing to copy

    def sleep(self) -> None:
        pass

    def wake(self) -> None:
        pass


# ---------------------------------------------------------------------------------- vllm
def vllm_unavailable() -> str | None:
    """Why the vLLM engine cannot run here (``None``: it can)."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "stage.rollout.engine=vllm needs the vllm package, which is not installed (it is an optional extra that "
            "brings its own CUDA build of torch: pip install -e '.[vllm]' on a GPU machine); use stage.rollout.engine=hf"
        )
    if not torch.cuda.is_available():
        return "stage.rollout.engine=vllm needs a CUDA GPU (none is visible here); use stage.rollout.engine=hf"
    return None


def check_rollout_config(cfg: Any, stage: str) -> None:
    """Start-up checks of ``stage.rollout`` for the RL stage ``stage`` (``ValueError``)."""
    r = cfg.stage.rollout
    if str(r.engine) != "vllm":
        return
    why = vllm_unavailable()
    if why:
        raise ValueError(f"stage={stage}: {why}")
    if cfg.strategy.name in ("fsdp", "deepspeed_zero3", "deepspeed_zero3_offload"):
        raise ValueError(
            f"stage={stage} with stage.rollout.engine=vllm under strategy={cfg.strategy.name}: the colocated vLLM engine needs the "
            "policy's whole weights on each rank; use strategy=ddp or deepspeed_zero1/2 (one vLLM engine per GPU) or "
            "stage.rollout.engine=hf"
        )
    if cfg.strategy.accelerator == "cpu":
        raise ValueError(f"stage={stage}: stage.rollout.engine=vllm runs on a GPU, not with strategy.accelerator=cpu")


def policy_weights(model: Any) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) of the policy's weights under the names of its Hugging Face checkpoint,
    as vLLM's ``load_weights`` reads them. A LoRA policy is given with its adapters merged (the
    merge is undone before this returns; the tensors are copies)."""
    from llm.model.lora import is_peft

    if not is_peft(model):
        return [(n, t.detach()) for n, t in model.state_dict().items()]
    model.merge_adapter()
    try:
        out = []
        for n, t in model.state_dict().items():
            if "lora_" in n or ".modules_to_save." in n:
                continue
            n = n.removeprefix("base_model.model.").replace(".base_layer.", ".")
            out.append((n, t.detach().clone()))
    finally:
        model.unmerge_adapter()
    return out


class VLLMEngine:
    """A vLLM engine colocated with the policy on its GPU (one per process).

    Built from the policy's checkpoint directory (architecture and tokenizer); the weights it
    generates with are the policy's, loaded by :meth:`sync_weights` through the worker's
    ``model_runner.model.load_weights`` (``LLM.collective_rpc``, the engine core in this process:
    ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; ``distributed_executor_backend="external_launcher"``:
    under DDP each rank is one replica on its own GPU, seeded by its rank). Sleep mode (``enable_sleep_mode``): :meth:`sleep`
    frees its KV cache and offloads (level 1) or discards (level 2) its weights while the policy
    trains; :meth:`wake` takes the weights back, loads the policy's if they changed, then
    re-creates the KV cache. Sampled log-probs come from ``SamplingParams(logprobs=0)`` with
    ``logprobs_mode="processed_logprobs"`` (after temperature; with top-k/top-p also after
    their filtering, so they then differ from the trainer's by the renormalisation)."""

    name = "vllm"

    def __init__(self, checkpoint: str, tokenizer: Any, stop_ids: list[int], pad_id: int, rcfg: Any, seed: int, max_len: int) -> None:
        why = vllm_unavailable()
        if why:
            raise RuntimeError(why)
        # the engine core and its worker in this process (weights passed by reference), one worker per training
        # process on that process's GPU (cuda:LOCAL_RANK), joining the process group the trainer already set up
        # (torchrun / Lightning's launcher set these; a single process gets a world of one)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", "29517")):
            os.environ.setdefault(k, v)
        from vllm import LLM

        self.stop_ids, self.pad_id, self.level = list(stop_ids), pad_id, int(rcfg.vllm_sleep_level)
        self.llm = LLM(
            model=checkpoint,
            tokenizer=checkpoint,
            dtype=str(rcfg.vllm_dtype),
            gpu_memory_utilization=float(rcfg.vllm_gpu_memory_utilization),
            enable_sleep_mode=True,
            distributed_executor_backend="external_launcher",  # each training process is one data-parallel vLLM replica
            tensor_parallel_size=1,
            seed=seed,
            max_model_len=max_len,
            logprobs_mode="processed_logprobs",
            trust_remote_code=False,
        )
        self.asleep = False
        self.model: Any = None
        self.stale = False
        log.info("vLLM rollout engine on %s (gpu_memory_utilization=%s)", checkpoint, rcfg.vllm_gpu_memory_utilization)

    def _load(self) -> None:
        weights = policy_weights(self.model)

        def load(worker: Any) -> int:  # runs in the (in-process) worker
            runner = getattr(worker, "model_runner", None) or worker.worker.model_runner
            return len(runner.model.load_weights(weights=weights) or ())

        self.llm.collective_rpc(load)
        self.stale = False

    def sync_weights(self, model: Any) -> None:
        self.model, self.stale = model, True
        if not self.asleep:
            self._load()

    def sleep(self) -> None:
        if not self.asleep:
            self.llm.sleep(level=self.level)
            self.asleep = True
            torch.cuda.empty_cache()

    def wake(self) -> None:
        if not self.asleep:
            return
        self.llm.wake_up(tags=["weights"])
        if self.model is not None and (self.stale or self.level == 2):
            self._load()
        self.llm.wake_up(tags=["kv_cache"])
        self.asleep = False

    def generate(
        self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, sampling: Sampling, logprobs: bool = True, **extra: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        from vllm import SamplingParams

        self.wake()
        greedy = not sampling.do_sample
        params = SamplingParams(
            n=1,
            temperature=0.0 if greedy else sampling.temperature,
            top_k=-1 if greedy or not sampling.top_k else int(sampling.top_k),
            top_p=1.0 if greedy or sampling.top_p is None else float(sampling.top_p),
            max_tokens=sampling.max_new_tokens,
            stop_token_ids=self.stop_ids,
            logprobs=0 if logprobs and not greedy else None,
            skip_special_tokens=False,
        )
        prompts = [{"prompt_token_ids": ids[m.bool()].tolist()} for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        rows = [o.outputs[0] for o in outs]
        R = max(1, max(len(r.token_ids) for r in rows))
        new = torch.full((len(rows), R), self.pad_id, dtype=torch.long)
        lp = torch.zeros((len(rows), R), dtype=torch.float32)
        for i, r in enumerate(rows):
            ids = list(r.token_ids)
            new[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            if params.logprobs is not None:
                lp[i, : len(ids)] = torch.tensor([float(step[t].logprob) for t, step in zip(ids, r.logprobs)])
        device = prompt_ids.device  # greedy answers (validation) carry no sampling log-probs
        return new.to(device), (lp.to(device) if params.logprobs is not None else None)


def make_engine(
    rcfg: Any, model: Any, tokenizer: Any, *, checkpoint: str | None, stop_ids: list[int], pad_id: int, seed: int, max_len: int
):
    """The rollout engine ``stage.rollout`` names."""
    name = str(rcfg.engine)
    if name == "hf":
        return HFEngine(model, tokenizer, chat=True)
    if name == "vllm":
        if not checkpoint:
            raise ValueError("stage.rollout.engine=vllm builds its engine from model.pretrained (a Hugging Face directory)")
        return VLLMEngine(checkpoint, tokenizer, stop_ids, pad_id, rcfg, seed, max_len)
    raise ValueError(f"stage.rollout.engine={name!r}: one of {', '.join(ENGINES)}")
