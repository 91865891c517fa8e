"""Run under torchrun (CPU, gloo; tests/test_strategies.py::test_tensor_parallel_plan_models):
:func:`llm.strategy.apply_tensor_parallel` over all ranks on small random Llama, Qwen2 and Gemma
causal LMs (grouped-query attention; untied and tied embeddings) against the same model unsplit,
on plain, padded (``attention_mask``) and packed (restarting ``position_ids``) batches. Rank 0
prints one JSON line per model and batch: the largest differences of the logits, the loss and
every parameter's gradient (gathered whole with ``DTensor.full_tensor``)."""

from __future__ import annotations

import copy
import json

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from transformers import GemmaConfig, GemmaForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from llm.strategy import apply_tensor_parallel

SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=128)


def models() -> dict[str, torch.nn.Module]:
    out = {}
    for name, cls, conf in (
        ("llama", LlamaForCausalLM, LlamaConfig(**SHAPE, tie_word_embeddings=False)),
        ("qwen2", Qwen2ForCausalLM, Qwen2Config(**SHAPE, tie_word_embeddings=True)),
        ("gemma", GemmaForCausalLM, GemmaConfig(**SHAPE, head_dim=16, tie_word_embeddings=True)),
    ):
        torch.manual_seed(0)  # the same weights on every rank
        out[name] = cls(conf).train()
    return out


def batches() -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SHAPE["vocab_size"], (2, 16), generator=g)
    pad = torch.ones_like(ids)
    pad[1, 11:] = 0
    labels = ids.masked_fill(pad == 0, -100)
    pos = torch.cat([torch.arange(6), torch.arange(10)]).repeat(2, 1)
    return {
        "plain": {"input_ids": ids, "labels": ids},
        "padded": {"input_ids": ids, "labels": labels, "attention_mask": pad},
        "packed": {"input_ids": ids, "labels": ids, "position_ids": pos},
    }


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tensor_parallel",))
    for name, ref in models().items():
        tp = apply_tensor_parallel(copy.deepcopy(ref), mesh)
        for kind, batch in batches().items():
            ref.zero_grad(set_to_none=True)
            tp.zero_grad(set_to_none=True)
            a, b = ref(**batch, use_cache=False), tp(**batch, use_cache=False)
            a.loss.backward()
            b.loss.backward()
            ref_grads = dict(ref.named_parameters())
            grads = {n: (p.grad.full_tensor() - ref_grads[n].grad).abs().max().item() for n, p in tp.named_parameters()}
            tied = tp.lm_head.weight is tp.model.embed_tokens.weight
            row = {
                "model": name,
                "batch": kind,
                "tied": tied,
                "local_q_rows": tp.model.layers[0].self_attn.q_proj.weight.to_local().shape[0],
                "logits": (a.logits - b.logits).abs().max().item(),
                "loss": abs(a.loss.item() - b.loss.item()),
                "grads": max(grads.values()),
                "n_grads": len(grads),
                "n_ref_grads": len(ref_grads),
            }
            if dist.get_rank() == 0:
                print(json.dumps(row), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
