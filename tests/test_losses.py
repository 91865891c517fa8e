"""Pure functions against values worked by hand."""

import math

import torch

from llm.losses import token_nll_sum
from llm.stages.base import param_groups, warmup_cosine


def test_token_nll_sum_by_hand():
    # two positions, vocabulary of 3; the second is ignored
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(1.0)], [5.0, 0.0, 0.0]]])
    labels = torch.tensor([[1, -100]])
    nll, n = token_nll_sum(logits, labels)
    # softmax of [0, ln2, 0] = [1/4, 2/4, 1/4]; -ln(1/2)
    assert n.item() == 1
    assert abs(nll.item() - math.log(2.0)) < 1e-6


def test_token_nll_sum_is_sum_not_mean():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    nll, n = token_nll_sum(logits, labels)
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1), reduction="mean")
    assert n.item() == 10
    assert torch.allclose(nll / n, ref, atol=1e-6)


def test_warmup_cosine_values():
    # linear warm-up over 10 steps, cosine from 1 to 0.1 between steps 10 and 110
    assert warmup_cosine(0, 10, 110, 0.1) == 0.1
    assert warmup_cosine(9, 10, 110, 0.1) == 1.0
    assert abs(warmup_cosine(10, 10, 110, 0.1) - 1.0) < 1e-12
    assert abs(warmup_cosine(60, 10, 110, 0.1) - 0.55) < 1e-12  # half-way: 0.1 + 0.9 * 0.5
    assert abs(warmup_cosine(110, 10, 110, 0.1) - 0.1) < 1e-12
    assert abs(warmup_cosine(500, 10, 110, 0.1) - 0.1) < 1e-12


def test_weight_decay_by_rule():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    )
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all("norm" in names[id(p)] for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
