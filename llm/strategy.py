"""Strategy construction: the one place that knows about devices, processes and sharding.

Stages and models never ask whether they run on one CPU or 512 GPUs; they call the few helpers
at the end of this file (``parallelize``, ``micro_batch_context``, ``clip_gradients``,
``consolidated_state_dict``), which do the right thing for each strategy.

Strategies (``conf/strategy``):

* ``single``, ``ddp``: Lightning's own.
* ``deepspeed_zero1|2|3``, ``deepspeed_zero3_offload``: Lightning's ``DeepSpeedStrategy``,
  subclassed so that it also runs on CPU processes (gloo), never builds the model under
  ``deepspeed.zero.Init``'s constructor patching (the sharded start makes the ZeRO-3 partitions
  itself, a block at a time: ``llm.model.materialise.Zero3Partition``; a whole build, LoRA's for
  one, is partitioned when the engine starts) and writes checkpoints atomically.
* ``fsdp``: FSDP2 (``fully_shard`` per decoder layer, then the root) through Lightning's
  ``ModelParallelStrategy`` with a pure data-parallel mesh; distributed (DCP) checkpoints written
  atomically.
* ``fsdp_tp``: the same strategy on a 2-D mesh (``data_parallel`` x ``tensor_parallel``):
  DTensor tensor and sequence parallelism inside each tensor-parallel group
  (:func:`apply_tensor_parallel`, torchtitan's Llama plan), then FSDP2 over the data-parallel
  dimension.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from llm.config import EvalConfig, StrategyConfig, TrainerConfig
from llm.writes import write_guard

log = logging.getLogger(__name__)

#: DeepSpeed strategy name -> ZeRO stage
DEEPSPEED = {"deepspeed_zero1": 1, "deepspeed_zero2": 2, "deepspeed_zero3": 3, "deepspeed_zero3_offload": 3}
#: strategies whose ranks each hold only a shard of the parameters
PARAM_SHARDED = ("deepspeed_zero3", "deepspeed_zero3_offload", "fsdp", "fsdp_tp")
STRATEGIES = ("single", "ddp", *DEEPSPEED, "fsdp", "fsdp_tp")


@dataclass
class Placement:
    accelerator: str
    devices: Any
    num_nodes: int
    strategy: Any
    precision: str
    name: str = "single"

    @property
    def param_sharded(self) -> bool:
        return self.name in PARAM_SHARDED

    @property
    def plugins(self) -> list:
        """Lightning plugins: DeepSpeed and FSDP write their own (sharded, atomic) checkpoints."""
        return [atomic_checkpoint_io()] if self.name in ("single", "auto", "ddp") else []


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("LOCAL_WORLD_SIZE" in os.environ and "RANK" in os.environ)


def resolve_precision(precision: str, accelerator: str) -> str:
    if precision == "auto":
        if accelerator == "gpu" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed"
        return "32-true"
    if precision in ("16-mixed", "16", "16-true"):
        raise ValueError(
            f"trainer.precision={precision}: fp16 needs loss scaling, which this framework does not do; "
            "use bf16-mixed (GPUs since Ampere) or 32-true"
        )
    return precision


def deepspeed_config(cfg: StrategyConfig, grad_clip: float, micro_batch_size: int, gpu: bool) -> dict:
    """The DeepSpeed config of a ``deepspeed_*`` strategy. Gradient accumulation stays with the
    stage (``gradient_accumulation_steps: 1``; the stage marks the last micro-batch of a step with
    ``set_gradient_accumulation_boundary``), so the loss normalisation is the same as under DDP."""
    stage = DEEPSPEED[cfg.name]  # gradient_accumulation_steps: Lightning sets it to 1 (accumulate_grad_batches)
    offload_opt = cfg.offload_optimizer or cfg.name == "deepspeed_zero3_offload"
    offload_par = cfg.offload_params or cfg.name == "deepspeed_zero3_offload"
    zero: dict[str, Any] = {"stage": stage, "contiguous_gradients": True, "overlap_comm": gpu, "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update(stage3_prefetch_bucket_size="auto", stage3_param_persistence_threshold="auto")
    if offload_opt:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": gpu}
    if offload_par:
        zero["offload_param"] = {"device": "cpu", "pin_memory": gpu}
    conf: dict[str, Any] = {
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        # the stage's torch AdamW (fused) also steps the offloaded state, on the CPU
        "zero_force_ds_cpu_optimizer": False,
        "gradient_clipping": float(grad_clip or 0.0),
        "train_micro_batch_size_per_gpu": int(micro_batch_size),
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    over = cfg.deepspeed_config or {}
    if not isinstance(over, dict):
        from omegaconf import OmegaConf

        over = OmegaConf.to_container(over, resolve=True)
    if not isinstance(over, dict):
        raise ValueError(f"strategy.deepspeed_config must be a mapping of DeepSpeed config keys, got {over!r}")
    return _merge(conf, over)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_placement(cfg: StrategyConfig, trainer_cfg: TrainerConfig, grad_clip: float = 1.0, micro_batch_size: int = 1) -> Placement:
    accelerator = cfg.accelerator
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    precision = resolve_precision(trainer_cfg.precision, accelerator)
    devices, num_nodes = cfg.devices, cfg.num_nodes
    if launched_by_torchrun():
        # the world is given by the launcher: one process per device
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        devices, num_nodes = local, max(1, world // local)

    if cfg.name in ("single", "auto"):
        if launched_by_torchrun() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("strategy=single cannot run under torchrun with several processes: use strategy=ddp")
        if accelerator == "gpu":
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return Placement(accelerator, 1, 1, SingleDeviceStrategy(device=device), precision, "single")

    if cfg.name not in STRATEGIES:
        raise ValueError(f"strategy.name={cfg.name!r}: unknown (choose one of {', '.join(STRATEGIES)})")
    if devices == "auto":
        devices = torch.cuda.device_count() if accelerator == "gpu" else 2
    from datetime import timedelta

    timeout = timedelta(minutes=cfg.timeout_minutes or 30)  # 30: torch's default
    backend = cfg.process_group_backend or ("nccl" if accelerator == "gpu" else "gloo")
    if cfg.name == "ddp":
        strategy = DDPStrategy(
            process_group_backend=backend, find_unused_parameters=cfg.find_unused_parameters, gradient_as_bucket_view=True, timeout=timeout
        )
        return Placement(accelerator, devices, num_nodes, strategy, precision, "ddp")
    if cfg.name in DEEPSPEED:
        conf = deepspeed_config(cfg, grad_clip, micro_batch_size, gpu=accelerator == "gpu")
        strategy = _deepspeed_strategy_class()(config=conf, process_group_backend=backend, timeout=timeout)
        return Placement(accelerator, devices, num_nodes, strategy, precision, cfg.name)
    # fsdp: one data-parallel mesh dimension over every rank; fsdp_tp: data_parallel x tensor_parallel
    world = int(devices) * int(num_nodes)
    tp = int(cfg.tensor_parallel) if cfg.name == "fsdp_tp" else 1
    if world % tp:
        raise ValueError(
            f"strategy.tensor_parallel={tp} does not divide the world size {world} ({num_nodes} node(s) x {devices} device(s))"
        )
    strategy = _fsdp_strategy_class()(
        data_parallel_size=world // tp,
        tensor_parallel_size=tp,
        save_distributed_checkpoint=True,
        process_group_backend=backend,
        timeout=timeout,
    )
    return Placement(accelerator, devices, num_nodes, strategy, precision, cfg.name)


def check_switches(placement: Placement, strategy: StrategyConfig, trainer_cfg: TrainerConfig, eval_cfg: EvalConfig) -> None:
    """Refuse, at start and with the reason, the switches a strategy cannot honour (the stages'
    own refusals are in their declarations, ``llm.stages``)."""
    name = strategy.name
    if placement.param_sharded and eval_cfg.tasks and eval_cfg.every_n_steps > 0:
        raise ValueError(
            f"eval.every_n_steps={eval_cfg.every_n_steps} under strategy={name}: the evaluator runs on rank 0 alone, which "
            "holds only a shard of the weights; set eval.every_n_steps=0 (the suite still runs on the consolidated model at the end)"
        )
    if name in ("deepspeed_zero3", "deepspeed_zero3_offload") and trainer_cfg.compile:
        raise ValueError(
            f"trainer.compile=true under strategy={name}: ZeRO-3 fetches each parameter in module hooks that torch.compile "
            "cannot trace through; use strategy=fsdp (compiled per layer) or deepspeed_zero1/2 to compile"
        )
    if name == "fsdp_tp" and trainer_cfg.compile:
        raise ValueError(
            "trainer.compile=true under strategy=fsdp_tp: compiling the tensor-parallel layers (DTensor hooks around "
            "transformers' modules) is not supported here yet; use strategy=fsdp to compile"
        )


def atomic_checkpoint_io() -> Any:
    """Lightning's CheckpointIO writing each checkpoint to ``<name>.tmp`` in the same directory,
    fsyncing it, renaming it into place and fsyncing the directory: a crash, a kill or a full
    disk mid-write leaves the previous checkpoints as they were and never a truncated ``.ckpt``,
    also after a node loses power (Lightning's save goes through fsspec, which renames a temp
    file into place but never fsyncs, so the new name can reach the disk before the data)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint: dict, path: Any, storage_options: Any = None) -> None:
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO: storage_options are not supported")
            path = os.fspath(path)
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            tmp = path + ".tmp"
            try:
                with write_guard(path, "checkpoint"), open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                try:
                    os.remove(tmp)
                except OSError:
                    pass
                raise
            _fsync_dir(os.path.dirname(path) or ".")  # the rename itself reaches the disk

    return AtomicCheckpointIO()


# ------------------------------------------------------------------ strategies
def _fsync_tree(root: str) -> None:
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(os.path.dirname(root) or ".")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _atomic_directory_save(strategy: Any, filepath: Any, write: Any) -> None:
    """Every rank writes its part of a directory checkpoint into ``<path>.tmp``; then rank 0
    fsyncs it and renames it into place. A crash or a full disk leaves the previous
    checkpoints as they were and never a directory that looks complete but is not."""
    path = os.fspath(strategy.broadcast(os.fspath(filepath)))
    tmp = path + ".tmp"
    if strategy.is_global_zero and os.path.exists(tmp):
        shutil.rmtree(tmp)
    strategy.barrier("ckpt_tmp_clean")
    write(tmp)
    strategy.barrier("ckpt_written")
    if strategy.is_global_zero:
        _fsync_tree(tmp)
        old = path + ".old"
        if os.path.exists(path):
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(os.path.dirname(path) or ".")
        if os.path.exists(old):
            shutil.rmtree(old) if os.path.isdir(old) else os.remove(old)
    strategy.barrier("ckpt_renamed")


class _DirectoryCheckpoints:
    """Mixin for strategies whose checkpoints are directories of per-rank shards: written
    atomically (:func:`_atomic_directory_save`) and removed whole."""

    def save_checkpoint(self, checkpoint: dict, filepath: Any, storage_options: Any = None) -> None:
        parent = super()
        with write_guard(filepath, "checkpoint"):
            _atomic_directory_save(self, filepath, lambda tmp: parent.save_checkpoint(checkpoint, tmp, storage_options))

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero and os.path.exists(filepath):
            shutil.rmtree(filepath) if os.path.isdir(filepath) else os.remove(filepath)


def _deepspeed_strategy_class() -> type:
    from lightning.fabric.utilities.seed import reset_seed
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.strategies import DeepSpeedStrategy

    class XiulianDeepSpeedStrategy(_DirectoryCheckpoints, DeepSpeedStrategy):
        """Lightning's DeepSpeed strategy, also on CPU processes (tests, laptops)."""

        def setup_environment(self) -> None:
            if isinstance(self.accelerator, CUDAAccelerator):
                return super().setup_environment()
            DDPStrategy.setup_environment(self)  # Lightning refuses a CPU accelerator here; DeepSpeed does not

        def setup_distributed(self) -> None:
            if isinstance(self.accelerator, CUDAAccelerator):
                return super().setup_distributed()
            reset_seed()
            self.set_world_ranks()
            self._init_deepspeed_distributed()

        @contextmanager
        def _device_rank(self) -> Iterator[None]:
            """``deepspeed.initialize`` takes its device from ``args.device_rank``, which Lightning
            sets to the device index: ``None`` on CPU. Give it the local rank instead."""
            import deepspeed

            orig = deepspeed.initialize

            def initialize(args: Any = None, **kw: Any) -> Any:
                if args is not None and getattr(args, "device_rank", 0) is None:
                    args.device_rank = self.local_rank
                return orig(args=args, **kw)

            deepspeed.initialize = initialize
            try:
                yield
            finally:
                deepspeed.initialize = orig

        def _setup_model_and_optimizer(self, model: Any, *a: Any, **kw: Any) -> Any:
            fill_auto_buckets(self.config, model)
            with self._device_rank():
                return super()._setup_model_and_optimizer(model, *a, **kw)

        def _initialize_deepspeed_inference(self, model: Any) -> None:
            with self._device_rank():
                return super()._initialize_deepspeed_inference(model)

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            """DeepSpeed reads its shard files with ``torch.load(weights_only=False)``; the engine's
            reader is replaced by :func:`llm.safeload.torch_load` (weights only, DeepSpeed's data
            records allowed) unless the run says ``weights_only=false``."""
            from llm import safeload

            if weights_only is False:
                safeload.trusted_warning(checkpoint_path)
            else:
                self.deepspeed_engine.checkpoint_engine.load = lambda path, map_location=None: safeload.torch_load(path, map_location)
            return super().load_checkpoint(checkpoint_path, weights_only)

        @contextmanager
        def model_sharded_context(self) -> Iterator[None]:
            # no zero.Init context: the sharded start partitions a block at a time itself
            # (Zero3Partition); a whole build (LoRA) is partitioned when the engine starts
            self._init_config_if_needed()
            yield

    return XiulianDeepSpeedStrategy


def fill_auto_buckets(config: dict, module: torch.nn.Module) -> None:
    """Bucket sizes left ``auto`` scale with the model's width h (the rule of transformers'
    DeepSpeed integration): reduce bucket h², ZeRO-3 prefetch 0.9 h², parameters under 10 h
    elements stay whole on every rank. DeepSpeed's own default reduce bucket (5e8 elements) is a
    2 GB fp32 buffer per rank whatever the model's size."""
    cfg = next((m.config for m in module.modules() if hasattr(getattr(m, "config", None), "to_dict")), None)
    h = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", None) or 1024
    zero = config.get("zero_optimization", {})
    auto = {"reduce_bucket_size": h * h, "stage3_prefetch_bucket_size": int(0.9 * h * h), "stage3_param_persistence_threshold": 10 * h}
    for k, v in auto.items():
        if zero.get(k) == "auto":
            zero[k] = v


def _fsdp_strategy_class() -> type:
    from lightning.pytorch.strategies import ModelParallelStrategy

    class XiulianFSDPStrategy(_DirectoryCheckpoints, ModelParallelStrategy):
        """FSDP2 through Lightning's ModelParallelStrategy; the stage shards its model in
        ``configure_model`` with :func:`parallelize`."""

        def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
            """torch's distributed checkpoint unpickles its ``.metadata`` and non-tensor items with
            no restriction; Lightning's loader is pointed at :func:`llm.safeload.dcp_load` (an
            allow-listed metadata unpickler, items with ``weights_only=True``) unless the run says
            ``weights_only=false``. Lightning's own ``meta.pt`` loads with ``weights_only``."""
            import lightning.fabric.strategies.model_parallel as fabric_mp

            from llm import safeload

            if weights_only is False:
                safeload.trusted_warning(checkpoint_path)
                return super().load_checkpoint(checkpoint_path, weights_only)
            orig = fabric_mp._distributed_checkpoint_load
            fabric_mp._distributed_checkpoint_load = safeload.dcp_load
            try:
                return super().load_checkpoint(checkpoint_path, weights_only=True)
            finally:
                fabric_mp._distributed_checkpoint_load = orig

    return XiulianFSDPStrategy


def is_deepspeed(strategy: Any) -> bool:
    return any(c.__name__ == "DeepSpeedStrategy" for c in type(strategy).__mro__)  # without importing deepspeed


def is_zero3(strategy: Any) -> bool:
    """DeepSpeed ZeRO-3: each rank holds a partition of every parameter, and the engine's module
    hooks all-gather a module's weights before its forward and release them after it."""
    return is_deepspeed(strategy) and bool(getattr(strategy, "zero_stage_3", False))


@contextmanager
def gathered_weights(strategy: Any, module: torch.nn.Module) -> Iterator[None]:
    """ZeRO-3: ``module``'s whole weights on every rank for the duration of the block, gathered
    once on entry (``deepspeed.zero.GatheredParameters``) and partitioned again on exit; a
    collective, so every rank enters it. Without it, the engine's module hooks gather each
    module's weights before every forward and release them after it: generating R tokens would
    all-gather the whole model R times. Inside the block the engine's hooks are also suspended
    (:func:`_without_engine_hooks`, as TRL does around generation): with the weights there they
    would only cost time at every module and token, and they record the order of module forwards,
    which ZeRO-3 checks is the same on every rank (ranks then generate on their own, each until its
    answers end). Parameters ZeRO-3 keeps whole anyway (``ds_persist``: the small ones) are left
    as they are. For forward passes only (no gradients). Other strategies: nothing to do."""
    if not is_zero3(strategy):
        yield
        return
    import deepspeed

    settle_prefetched(strategy)
    params = [p for p in module.parameters() if hasattr(p, "ds_id") and not getattr(p, "ds_persist", False)]
    with deepspeed.zero.GatheredParameters(params, enabled=bool(params), modifier_rank=None), _without_engine_hooks(strategy):
        yield


def settle_prefetched(strategy: Any) -> None:
    """ZeRO-3: parameters the engine prefetched for a next forward are still in flight, and
    ZeRO-3 can neither gather nor partition them: wait for them and release them, before any
    gather outside the engine's hooks (generation, the streamed export)."""
    _engine_offload(strategy).get_param_coordinator()._clean_inflight_param_registry()


def _engine_offload(strategy: Any) -> Any:
    """ZeRO-3 engine's ``DeepSpeedZeRoOffload`` (its module hooks and parameter coordinator)."""
    opt = getattr(strategy.model, "optimizer", None)
    offload = getattr(opt, "parameter_offload", opt)  # an engine without an optimizer (validation only) holds the offload itself
    if offload is None or not hasattr(offload, "forward_hooks") or not hasattr(offload, "get_param_coordinator"):
        import deepspeed

        raise RuntimeError(
            f"ZeRO-3: the engine's optimizer ({type(opt).__name__}) has no parameter_offload with forward_hooks in DeepSpeed "
            f"{deepspeed.__version__}; set stage.rollout.zero3_gather=false (weights gathered per layer and token)"
        )
    return offload


@contextmanager
def _without_engine_hooks(strategy: Any) -> Iterator[None]:
    """The module hooks ZeRO-3's engine registered (``forward_hooks`` and ``backward_hooks`` of its
    ``optimizer.parameter_offload``, or of its ``optimizer`` when that is the offload itself) taken out of their modules for the duration, then put back exactly as they
    were (each hook dictionary restored in its order; nothing re-registered, so the engine's module
    ids and trace stay as they were)."""
    offload = _engine_offload(strategy)
    handles = [*getattr(offload, "forward_hooks", []), *getattr(offload, "backward_hooks", [])]
    ids = {h.id for h in handles}
    saved: dict[int, tuple[dict, list]] = {}
    for h in handles:
        for ref in (h.hooks_dict_ref, *h.extra_dict_ref):
            d = ref()
            if d is not None and id(d) not in saved:
                saved[id(d)] = (d, list(d.items()))
    for d, _ in saved.values():
        for i in ids:
            d.pop(i, None)
    try:
        yield
    finally:
        for d, items in saved.values():
            d.clear()
            d.update(items)


# --------------------------------------------------------- helpers for stages
def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks of a transformers model (also inside a PEFT wrapper): the
    ModuleList with one entry per hidden layer."""
    cfg = getattr(model, "config", None)
    n = getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer", None)
    for mod in model.modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n and n:
            return list(mod)
    raise ValueError(f"{type(model).__name__}: no ModuleList of {n} decoder layers found to shard")


#: transformers ``model_type`` s whose causal LM has Llama's module names (``model.embed_tokens``,
#: ``model.layers[i].self_attn.{q,k,v,o}_proj``, ``mlp.{gate,up,down}_proj``, two RMSNorms per layer,
#: ``model.norm``, ``lm_head``), which :func:`apply_tensor_parallel` splits
TP_MODEL_TYPES = ("llama", "qwen2", "gemma")


def check_tensor_parallel(config: Any, tp: int) -> None:
    """Refuse, with the reason, a model that :func:`apply_tensor_parallel` cannot split ``tp``
    ways: an architecture without a plan, or a head count, MLP width or vocabulary that ``tp``
    does not divide (each rank must hold whole heads: transformers' attention reshapes its
    projections to ``(..., -1, head_dim)``, so a rank's heads are what its shard of q/k/v holds)."""
    kind = getattr(config, "model_type", None)
    if kind not in TP_MODEL_TYPES:
        raise ValueError(
            f"strategy=fsdp_tp: no tensor-parallel plan for model_type={kind!r} (plans for: {', '.join(TP_MODEL_TYPES)}); use strategy=fsdp"
        )
    heads = config.num_attention_heads
    sizes = {
        "num_attention_heads": heads,
        "num_key_value_heads": getattr(config, "num_key_value_heads", None) or heads,
        "intermediate_size": config.intermediate_size,
        "vocab_size": config.vocab_size,
    }
    for name, n in sizes.items():
        if n % tp:
            raise ValueError(
                f"strategy.tensor_parallel={tp} does not divide the model's {name}={n} ({kind}): every tensor-parallel rank "
                f"must hold an equal part; choose a tensor_parallel that divides {', '.join(f'{k}={v}' for k, v in sizes.items())}"
            )


def apply_tensor_parallel(model: torch.nn.Module, tp_mesh: Any) -> torch.nn.Module:
    """Tensor and sequence parallelism over ``tp_mesh`` (torchtitan's Llama plan, on transformers'
    module names): q/k/v and gate/up projections split by output columns, o and down by input
    rows (one reduction per block); between the blocks the residual stream is a DTensor sharded
    along the sequence (RMSNorms run on their part of the tokens; each attention and MLP block
    all-gathers its input and reduce-scatters its output). The embeddings are split by vocabulary
    rows and the LM head by vocabulary columns, its logits gathered whole on every rank, so the
    loss is computed as without TP. Tied embeddings stay tied (both are sharded by vocabulary)."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, PrepareModuleInput, RowwiseParallel, SequenceParallel, parallelize_module

    class GatheredSequenceParallel(SequenceParallel):
        """The final norm: on its part of the sequence, its output gathered whole (a local
        tensor) for the LM head, which transformers slices by position before projecting."""

        @staticmethod
        def _prepare_output_fn(use_local_output: bool, mod: Any, outputs: Any, device_mesh: Any) -> Any:
            return outputs.redistribute(placements=[Replicate()]).to_local()

    check_tensor_parallel(model.config, tp_mesh.size())
    base, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    if base is None or not isinstance(head, torch.nn.Linear) or not isinstance(getattr(base, "embed_tokens", None), torch.nn.Embedding):
        raise ValueError(
            f"strategy=fsdp_tp: {type(model).__name__} is not a causal LM with transformers' Llama layout (model.embed_tokens, "
            "lm_head); the tensor-parallel plan covers pretraining and full fine-tuning of causal LMs (no LoRA, no reward head)"
        )
    tied = head.weight is base.embed_tokens.weight
    parallelize_module(
        model,
        tp_mesh,
        {
            "model.embed_tokens": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
            "model.norm": GatheredSequenceParallel(),
            "lm_head": ColwiseParallel(output_layouts=Replicate()),
        },
    )
    block = {
        "input_layernorm": SequenceParallel(),
        "self_attn": PrepareModuleInput(
            input_kwarg_layouts={"hidden_states": Shard(1)},
            desired_input_kwarg_layouts={"hidden_states": Replicate()},
            use_local_output=True,
        ),
        "self_attn.q_proj": ColwiseParallel(),
        "self_attn.k_proj": ColwiseParallel(),
        "self_attn.v_proj": ColwiseParallel(),
        "self_attn.o_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        "post_attention_layernorm": SequenceParallel(),
        "mlp": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True),
        "mlp.gate_proj": ColwiseParallel(),
        "mlp.up_proj": ColwiseParallel(),
        "mlp.down_proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
    }
    for layer in decoder_layers(model):
        parallelize_module(layer, tp_mesh, block)
    if tied:
        head.weight = base.embed_tokens.weight  # both Shard(0) over the vocabulary
    plain = [n for n, p in model.named_parameters() if not hasattr(p, "device_mesh")]
    if plain:
        raise ValueError(f"strategy=fsdp_tp: the tensor-parallel plan left {plain[:5]} unsplit ({type(model).__name__}); use strategy=fsdp")
    log.info("tensor parallel: %d-way over %d decoder layers (sequence-parallel norms)", tp_mesh.size(), len(decoder_layers(model)))
    return model


def parallelize(
    model: torch.nn.Module, *, activation_checkpointing: bool = False, compile: bool = False, mesh: Any = None, tp_mesh: Any = None
) -> torch.nn.Module:
    """torchtitan's order: tensor parallelism (over ``tp_mesh``, :func:`apply_tensor_parallel`),
    activation checkpointing, then compile, then sharding (FSDP2 when a data-parallel ``mesh`` is
    given: each decoder layer, then the root). Under FSDP each layer is compiled on its own (a
    graph per block, as torchtitan does); otherwise the whole model."""
    if tp_mesh is not None:
        apply_tensor_parallel(model, tp_mesh)
    if activation_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", True):
            raise ValueError(f"strategy.activation_checkpointing: {type(model).__name__} does not support gradient checkpointing")
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "config"):
            model.config.use_cache = False
    layers = decoder_layers(model) if (mesh is not None) else []
    if compile:
        if mesh is not None:
            for layer in layers:
                layer.compile()
        else:
            model.compile()
    if mesh is not None:
        from torch.distributed.fsdp import fully_shard

        for i, layer in enumerate(layers):
            # the last block's weights are needed again at once by the backward: keep them
            fully_shard(layer, mesh=mesh, reshard_after_forward=i < len(layers) - 1)
        fully_shard(model, mesh=mesh)
    return model


def shard_module(module: torch.nn.Module, mesh: Any) -> torch.nn.Module:
    """FSDP2 for a module beside the model (PPO's value head or critic): per decoder layer when
    it has them, then the root."""
    from torch.distributed.fsdp import fully_shard

    try:
        layers = decoder_layers(module)
    except ValueError:
        layers = []
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return module


def data_and_tensor_meshes(device_mesh: Any) -> tuple[Any, Any]:
    """``(data-parallel mesh, tensor-parallel mesh)`` of Lightning's ``ModelParallelStrategy``
    mesh (``None`` for each that is absent; the tensor-parallel one also when it has one rank)."""
    if device_mesh is None:
        return None, None
    names = device_mesh.mesh_dim_names or ()
    if "tensor_parallel" not in names:  # a 1-D data-parallel mesh (e.g. built by hand, as the start-up benchmark does)
        return (device_mesh["data_parallel"] if "data_parallel" in names else device_mesh), None
    tp = device_mesh["tensor_parallel"]
    return device_mesh["data_parallel"], (tp if tp.size() > 1 else None)


def tensor_parallel_size(strategy: Any) -> int:
    """Ranks per tensor-parallel group (1 outside ``fsdp_tp``): they all see the same batch."""
    mesh = getattr(strategy, "_device_mesh", None)
    if mesh is None or "tensor_parallel" not in (mesh.mesh_dim_names or ()):
        return 1
    return int(mesh["tensor_parallel"].size())


def data_rank_world(trainer: Any) -> tuple[int, int]:
    """``(rank, number of ranks)`` among the data-parallel replicas, which each read their own
    part of the data: the global rank and world size, except under ``fsdp_tp``, where the ranks of
    a tensor-parallel group read the same batches (Lightning's ``distributed_sampler_kwargs``:
    the rank along the mesh's ``data_parallel`` dimension and its size)."""
    if tensor_parallel_size(trainer.strategy) > 1:
        kw = trainer.strategy.distributed_sampler_kwargs
        return int(kw["rank"]), int(kw["num_replicas"])
    return int(trainer.global_rank), int(trainer.world_size)


def micro_batch_context(strategy: Any, last: bool) -> Any:
    """Around the backward of one micro-batch of a step: DDP skips its all-reduce on every
    micro-batch but the last; DeepSpeed is told which micro-batch ends the step (its own
    gradient-accumulation boundary); FSDP2 reduce-scatters every micro-batch (its gradients are
    sharded, so accumulating unsharded ones would cost the memory FSDP saves)."""
    wrapped = getattr(strategy, "model", None)
    if isinstance(wrapped, torch.nn.parallel.DistributedDataParallel):
        return nullcontext() if last else wrapped.no_sync()
    if hasattr(wrapped, "set_gradient_accumulation_boundary"):
        # DeepSpeed counts micro-batches in its engine's forward, which Lightning calls once per
        # training_step; our micro-batches run inside it. ZeRO-3 overwrites (rather than adds to)
        # its gradient partitions while that count is 0, so do what the engine's forward does
        opt = getattr(wrapped, "optimizer", None)
        if hasattr(opt, "clear_backward_seen_flag"):
            opt.clear_backward_seen_flag()
        wrapped.set_gradient_accumulation_boundary(last)
    return nullcontext()


def clip_gradients(strategy: Any, params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor | None:
    """Global gradient norm (clipped to ``max_norm`` when > 0), before the optimizer step.
    ``None`` under DeepSpeed: its engine holds the gradients, clips them inside its step
    (``gradient_clipping``) and reports the norm afterwards (:func:`norm_after_step`)."""
    if is_deepspeed(strategy):
        return None
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norm = torch.nn.utils.get_total_norm(grads)
    full = getattr(norm, "full_tensor", None)
    if full is not None:  # FSDP2: the norm of the local shards, reduced over ranks
        norm = full()
    if max_norm and max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, norm)
    return norm


def norm_after_step(strategy: Any) -> torch.Tensor | None:
    """DeepSpeed: the gradient norm its last step computed (before clipping)."""
    if not is_deepspeed(strategy):
        return None
    n = strategy.model.get_global_grad_norm()
    return None if n is None else torch.as_tensor(float(n))


def engine_step(strategy: Any) -> torch.Tensor | None:
    """DeepSpeed: one update by its engine, outside Lightning's counted optimizer step (an RL
    stage's minibatch update, after a backward at a gradient-accumulation boundary): it clips the
    gradients its backward reduced (``gradient_clipping``), steps the optimizer and zeroes them.
    Returns the gradient norm before clipping."""
    strategy.model.step()
    return norm_after_step(strategy)


def no_engine_update(strategy: Any) -> None:
    """DeepSpeed: the next engine step (Lightning's counted optimizer step, which an RL stage takes
    with no gradients to count an iteration) is not at a gradient-accumulation boundary, so the
    engine makes no update (an empty ZeRO step would still move Adam's moments and decay the weights)."""
    if is_deepspeed(strategy):
        strategy.model.set_gradient_accumulation_boundary(False)


def consolidated_state_dict(strategy: Any, module: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The whole state dict of the LightningModule, on CPU, on rank 0 (``None`` on the other
    ranks); a collective under ZeRO-3 and FSDP, so every rank must call it. ``None`` everywhere
    when the parameters are not sharded (rank 0 holds them already)."""
    if is_deepspeed(strategy) and strategy.zero_stage_3:
        sd = strategy.model._zero3_consolidated_16bit_state_dict()
        return {k: v.detach().cpu().clone() for k, v in sd.items()} if strategy.is_global_zero else None
    if type(strategy).__name__ == "XiulianFSDPStrategy":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return sd if strategy.is_global_zero else None
    return None


# ------------------------------------------------------------ memory accounting
def _storage_key(t: torch.Tensor) -> tuple | None:
    local = getattr(t, "_local_tensor", None)  # DTensor: this rank's shard
    if local is not None:
        t = local
    try:
        st = t.untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None
    if st.nbytes() == 0:
        return None
    return (st.data_ptr(), st.nbytes(), t.device.type)


def state_bytes(strategy: Any, module: torch.nn.Module, optimizer: Any) -> dict[str, int]:
    """Bytes this rank holds in tensors, by role: ``params`` (its part of the model's weights),
    ``grads``, ``optimizer`` (Adam moments, and the fp32 master copies DeepSpeed keeps),
    ``other`` (every other live tensor: DeepSpeed's flat gradient and communication buffers, DDP's
    buckets, ...) and ``total``; ``cpu_total`` and ``accelerator_total`` split it by device. Each storage is counted once, under the first role that claims it.
    Call between backward and the optimizer step (``on_before_optimizer_step``): activations are
    freed then, so ``total`` is the training state."""
    import gc

    seen: dict[tuple, str] = {}
    out = {"params": 0, "grads": 0, "optimizer": 0, "other": 0}
    dev: dict[str, int] = {}

    def claim(t: Any, role: str) -> None:
        if not isinstance(t, torch.Tensor):
            return
        k = _storage_key(t)
        if k is not None and k not in seen:
            seen[k] = role
            out[role] += k[1]
            where = "cpu_total" if k[2] == "cpu" else "accelerator_total"
            dev[where] = dev.get(where, 0) + k[1]

    params = list(module.parameters())
    for p in params:
        ds = getattr(p, "ds_tensor", None)  # ZeRO-3: this rank's partition
        claim(ds if ds is not None else p, "params")
    for p in params:
        claim(p.grad, "grads")
    inner = optimizer
    while hasattr(inner, "optimizer") and inner.optimizer is not inner:
        if hasattr(inner, "averaged_gradients"):  # ZeRO-1/2: reduced gradient partitions
            for gs in getattr(inner, "averaged_gradients", {}).values():
                for g in gs or []:
                    claim(g, "grads")
        for name in ("grad_partitions_flat_buffer", "ipg_buffer"):
            b = getattr(inner, name, None)
            for g in b if isinstance(b, (list, tuple)) else [b]:
                claim(g, "grads")
        inner = inner.optimizer
    for group in getattr(inner, "param_groups", []):
        for p in group["params"]:
            claim(p, "optimizer")  # DeepSpeed's fp32 master partitions (the module's own params were claimed above)
            claim(p.grad, "grads")
    for st in getattr(inner, "state", {}).values():
        for v in st.values():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                claim(v, "optimizer")
    for obj in gc.get_objects():
        try:
            if isinstance(obj, torch.Tensor) and not obj.is_meta:
                claim(obj, "other")
        except (ReferenceError, RuntimeError):
            continue
    out["total"] = sum(out.values())
    out.update(dev)  # where it lives: with offloading, the optimizer state is in cpu_total
    return out


def gathered_tensors(
    strategy: Any, model: torch.nn.Module, entries: list[tuple[str, torch.Tensor, bool]]
) -> Iterator[tuple[str, torch.Tensor | None, bool]]:
    """``(name, whole tensor on CPU, is a parameter)`` for each of ``entries`` (``(name, parameter
    or buffer, is a parameter)``, from ``model``), in order: on rank 0 a copy of the whole tensor,
    ``None`` on the other ranks. A collective under ZeRO-3 and FSDP: every rank iterates it to the
    end. ZeRO-3 gathers one decoder layer's parameters at a time (``deepspeed.zero.GatheredParameters``,
    the rest one tensor at a time), FSDP2 each parameter (``DTensor.full_tensor``); so a rank
    holds at most one gathered layer, and rank 0 only the copies its consumer has not dropped."""
    first = strategy.is_global_zero
    zero3 = is_deepspeed(strategy) and strategy.zero_stage_3

    def copy(t: torch.Tensor) -> torch.Tensor | None:
        full = getattr(t, "full_tensor", None)
        if full is not None:  # FSDP2: all ranks all-gather this parameter
            t = full()
        return t.detach().cpu() if first else None  # written before the next gather: no copy needed on CPU

    if not zero3:
        for name, t, is_param in entries:
            yield name, copy(t), is_param
        return
    import deepspeed

    settle_prefetched(strategy)
    layer_of: dict[int, int] = {}
    try:
        for i, layer in enumerate(decoder_layers(model)):
            layer_of.update(dict.fromkeys((id(p) for p in layer.parameters()), i))
    except ValueError:
        pass
    groups: list[list[tuple[str, torch.Tensor, bool]]] = []
    for e in entries:
        key = layer_of.get(id(e[1]))
        if groups and key is not None and layer_of.get(id(groups[-1][0][1])) == key:
            groups[-1].append(e)
        else:
            groups.append([e])
    for group in groups:
        params = [t for _, t, is_param in group if is_param and hasattr(t, "ds_id")]
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            for name, t, is_param in group:
                yield name, copy(t), is_param
