"""Run under torchrun (CPU, gloo; tests/test_plan.py::test_tensor_parallel_activations_equal_what_autograd_saves):
a small Llama of this framework's builder split by :func:`llm.strategy.apply_tensor_parallel` over
all ranks; rank 0 prints, per precision, the bytes autograd saves for one forward and loss
(``saved_tensors_hooks``; a DTensor counted by its local shard, parameters excluded)."""

from __future__ import annotations

import contextlib
import json

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from llm.config import ModelConfig
from llm.losses import token_nll_sum
from llm.model.build import build_model
from llm.strategy import apply_tensor_parallel


def local(t: torch.Tensor) -> torch.Tensor:
    """The plain tensor under a DTensor (its shard) or a functional collective's result."""
    for _ in range(4):
        if hasattr(t, "_local_tensor"):
            t = t._local_tensor
        elif type(t).__name__ == "AsyncCollectiveTensor":
            t = t.trigger_wait()
        else:
            break
    return t


def saved_bytes(model: torch.nn.Module, ids: torch.Tensor, autocast: bool) -> int:
    params = {local(p).untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = local(t).untyped_storage()
        if st.data_ptr() not in params and st.nbytes():
            seen[st.data_ptr()] = st.nbytes()
        return t

    ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ac, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, use_cache=False)
        token_nll_sum(out.logits, ids)
    return sum(seen.values())


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tensor_parallel",))
    cfg = ModelConfig(name="t", arch="llama", n_layer=3, n_embd=128, n_head=4, n_kv_head=2)
    cfg.max_seq_len, cfg.vocab_size = 128, 1024
    torch.manual_seed(0)
    model = apply_tensor_parallel(build_model(cfg).train(), mesh)
    ids = torch.randint(0, 1024, (2, 64), generator=torch.Generator().manual_seed(1))
    for precision in ("32-true", "bf16-mixed"):
        got = saved_bytes(model, ids, precision == "bf16-mixed")
        if dist.get_rank() == 0:
            print(json.dumps({"precision": precision, "tp": dist.get_world_size(), "saved": got}), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
