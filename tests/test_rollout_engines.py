"""Rollout engines (llm/rl/engines.py) and the log-prob check with truncated importance sampling
(llm/rl/mismatch.py): the hf engine's sampling log-probs are the trainer's, greedy and sampled,
with left-padded prompts of different lengths; TIS weights, the mismatch statistics and the
weighted policy losses against hand-worked values; GRPO runs log the check, and a run whose
engine samples at another temperature than the trainer assumes shows the mismatch and applies
TIS; the vLLM engine is refused at start without vllm or CUDA, and runs where both exist."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from llm.model.engine import Sampling
from llm.rl.engines import HFEngine, RolloutEngine, tis_enabled, vllm_unavailable
from llm.rl.mismatch import logprob_mismatch, tis_stats, tis_weights

from conftest import compose

# ------------------------------------------------------------------------------- pure math
TRAINER = torch.tensor([[-1.0, -0.5, -2.0, -0.1, -7.0]])
ENGINE = torch.tensor([[-1.0, -1.0, -0.5, -3.0, -0.2]])
MASK = torch.tensor([[1, 1, 1, 1, 0]])  # the last token is padding


def test_tis_weights_on_hand_values():
    w = tis_weights(TRAINER, ENGINE, MASK, cap=2.0)
    # exp(0) = 1; exp(0.5) = 1.648721; exp(-1.5) = 0.223130; exp(2.9) = 18.17 -> capped at 2; padding -> 0
    assert w.tolist()[0] == pytest.approx([1.0, 1.6487213, 0.2231302, 2.0, 0.0], abs=1e-6)
    assert not w.requires_grad
    st = tis_stats(w, MASK, 2.0)
    assert float(st["tis_weight_mean"]) == pytest.approx((1.0 + 1.6487213 + 0.2231302 + 2.0) / 4, abs=1e-6)
    assert float(st["tis_capped_frac"]) == pytest.approx(0.25)
    assert tis_weights(TRAINER, ENGINE, MASK, cap=100.0)[0, 3] == pytest.approx(math.exp(2.9), rel=1e-5)
    with pytest.raises(ValueError, match="at least 1"):
        tis_weights(TRAINER, ENGINE, MASK, cap=0.5)


def test_logprob_mismatch_on_hand_values():
    st = logprob_mismatch(TRAINER, ENGINE, MASK)
    # |diff| on the 4 response tokens: 0, 0.5, 1.5, 2.9 (the padding's 6.8 is left out)
    assert float(st["logprob_diff_mean"]) == pytest.approx((0 + 0.5 + 1.5 + 2.9) / 4, abs=1e-6)
    assert float(st["logprob_diff_max"]) == pytest.approx(2.9, abs=1e-6)
    # k3 with r = trainer - engine: exp(r) - 1 - r
    k3 = [math.exp(r) - 1 - r for r in (0.0, 0.5, -1.5, 2.9)]
    assert float(st["mismatch_kl"]) == pytest.approx(sum(k3) / 4, abs=1e-5)
    same = logprob_mismatch(TRAINER, TRAINER, MASK)
    assert all(float(v) == 0 for v in same.values())


def test_policy_losses_with_importance_weights_on_a_hand_case():
    from llm.losses import ppo_policy_loss
    from llm.rl.group import policy_loss

    # two tokens: ratio 1 at the first, exp(0.5) = 1.6487 (clipped at 1.2 with A = 1) at the second
    old = torch.tensor([[-1.0, -1.0]])
    logp = torch.tensor([[-1.0, -0.5]], requires_grad=True)
    adv, mask, w = torch.tensor([1.0]), torch.tensor([[1, 1]]), torch.tensor([[0.5, 2.0]])
    base, _ = policy_loss(logp, old, adv, mask, eps_low=0.2)
    assert float(base.detach()) == pytest.approx(-(1.0 + 1.2) / 2, abs=1e-6)  # unchanged without weights
    loss, _ = policy_loss(logp, old, adv, mask, eps_low=0.2, is_weights=w)
    assert float(loss) == pytest.approx(-(0.5 * 1.0 + 2.0 * 1.2) / 2, abs=1e-6)
    loss.backward()
    # d/dlogp of -A * w * ratio / 2 at the unclipped token; the clipped one has no gradient
    assert logp.grad.tolist()[0] == pytest.approx([-0.25, 0.0], abs=1e-6)

    pg, _, _ = ppo_policy_loss(logp.detach(), old, adv.unsqueeze(1), mask.float(), 0.2, w)
    assert float(pg) == pytest.approx(-(0.5 * 1.0 + 2.0 * 1.2) / 2, abs=1e-6)
    pg0, _, _ = ppo_policy_loss(logp.detach(), old, adv.unsqueeze(1), mask.float(), 0.2)
    assert float(pg0) == pytest.approx(float(base.detach()), abs=1e-6)


def test_tis_is_on_by_default_for_vllm_only():
    def rc(**kw):
        return SimpleNamespace(**{"engine": "hf", "tis": None, "logprob_check": True, **kw})

    assert not tis_enabled(rc())
    assert tis_enabled(rc(engine="vllm"))
    assert not tis_enabled(rc(engine="vllm", tis=False))
    assert tis_enabled(rc(tis=True))
    from llm.config import check_config

    with pytest.raises(ValueError, match="stage.rollout.tis=true needs stage.rollout.logprob_check=true"):
        check_config(compose(["stage=grpo", "stage.rollout.tis=true", "stage.rollout.logprob_check=false"]))


# ------------------------------------------------------------------------------ hf engine
@pytest.fixture(scope="module")
def tiny(demo_data):
    """A tiny random Llama and the demo tokenizer (random weights: spread-out distributions)."""
    from llm.model.build import build_model

    tok = demo_data[0]
    torch.manual_seed(0)
    model = build_model(compose(["model.max_seq_len=128"]).model, len(tok)).eval()
    return model, tok


def _left_padded(tok, texts, pad):
    ids = [tok(t, add_special_tokens=False).input_ids for t in texts]
    P = max(len(i) for i in ids)
    prompt = torch.tensor([[pad] * (P - len(i)) + i for i in ids])
    mask = torch.tensor([[0] * (P - len(i)) + [1] * len(i) for i in ids])
    return prompt, mask


def _trainer_logprobs(model, prompt, pmask, responses, rmask, temperature):
    """The trainer's log-probs through the stage's own method (RolloutStage.response_logprobs)."""
    from llm.rl.experience import Rollout
    from llm.stages.rollout import RolloutStage

    ro = Rollout(prompt, pmask, responses, rmask, torch.ones(len(prompt), dtype=torch.bool), [], [])
    me = SimpleNamespace(model=model, rollout_cfg=SimpleNamespace(temperature=temperature))
    with torch.no_grad():
        return RolloutStage.response_logprobs(me, ro)[0]


@pytest.mark.parametrize("greedy,temperature", [(False, 0.7), (False, 1.3), (True, 0.7)])
def test_hf_engine_sampling_logprobs_are_the_trainers(tiny, greedy, temperature):
    from llm.stages.rollout import response_mask

    model, tok = tiny
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    prompt, pmask = _left_padded(tok, ["The", "Once upon a time there was", "A cat and a dog sat"], pad)
    engine = HFEngine(model, tok, chat=False)
    assert isinstance(engine, RolloutEngine)
    torch.manual_seed(1)
    sampling = Sampling(12, do_sample=not greedy, temperature=temperature, top_k=None, top_p=1.0)
    new, lp = engine.generate(prompt, pmask, sampling)
    assert lp is not None and lp.shape == new.shape and new.shape[1] >= 1
    rmask, _ = response_mask(new, [tok.eos_token_id])
    new = new.masked_fill(rmask == 0, pad)
    want = _trainer_logprobs(model, prompt, pmask, new, rmask, temperature)
    got = lp * rmask
    assert torch.allclose(got, want * rmask, atol=2e-5), (got - want * rmask).abs().max()
    assert float((got * rmask).abs().sum()) > 0  # log-probs, not zeros
    # the log-probs cost no other generation: without them the same tokens come out
    torch.manual_seed(1)
    again, none = engine.generate(prompt, pmask, sampling, logprobs=False)
    assert none is None and torch.equal(again.masked_fill(rmask == 0, pad), new)


# ----------------------------------------------------------------------------------- vllm
def test_vllm_engine_is_refused_at_start_without_vllm_or_cuda():
    why = vllm_unavailable()
    if why is None:
        pytest.skip("vllm and CUDA are both here: nothing to refuse")
    from llm.stages.registry import get_stage

    cfg = compose(["stage=grpo", "model=hf", "model.pretrained=/nonexistent", "data=tasks_demo", "stage.rollout.engine=vllm"])
    with pytest.raises(ValueError, match=r"stage.rollout.engine=vllm needs (the vllm package|a CUDA GPU).*stage.rollout.engine=hf"):
        get_stage("grpo").validate(cfg)
    cfg = compose(["stage=ppo", "model=hf", "model.pretrained=/nonexistent", "stage.rollout.engine=vllm"])
    with pytest.raises(ValueError, match="stage.rollout.engine=vllm needs"):
        get_stage("ppo").validate(cfg)


@pytest.mark.gpu
@pytest.mark.skipif(vllm_unavailable() is not None, reason=str(vllm_unavailable()))
def test_vllm_engine_logprobs_weight_sync_and_sleep(sft_run):
    """On a GPU with vllm: the colocated engine answers left-padded prompts with log-probs close
    to the trainer's, generates from the policy's weights after sync_weights, and sleeps/wakes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.rl.engines import VLLMEngine
    from llm.stages.rollout import response_mask

    path = sft_run[1]["export"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).cuda().eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rcfg = SimpleNamespace(vllm_sleep_level=1, vllm_dtype="float32", vllm_gpu_memory_utilization=0.3)
    engine = VLLMEngine(path, tok, [tok.eos_token_id], pad, rcfg, seed=0, max_len=256)
    engine.sync_weights(model)
    prompt, pmask = _left_padded(tok, ["The", "Once upon a time there was"], pad)
    prompt, pmask = prompt.cuda(), pmask.cuda()
    new, lp = engine.generate(prompt, pmask, Sampling(16, do_sample=True, temperature=0.8))
    rmask, _ = response_mask(new, [tok.eos_token_id])
    want = _trainer_logprobs(model, prompt, pmask, new.masked_fill(rmask == 0, pad), rmask, 0.8)
    assert float(((lp - want) * rmask).abs().max()) < 1e-2
    engine.sleep()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.0)  # a policy that changed: all-zero logits, uniform log-probs
    engine.sync_weights(model)
    engine.wake()
    _, lp2 = engine.generate(prompt, pmask, Sampling(4, do_sample=True, temperature=1.0))
    assert torch.allclose(lp2[:, 0], torch.full_like(lp2[:, 0], -math.log(model.config.vocab_size)), atol=1e-3)


# ------------------------------------------------------------------------------ GRPO runs
@pytest.fixture(scope="session")
def sft_export(sft_run):
    return sft_run[1]["export"]


def _grpo(run_dir, start, args):
    from test_grpo import _train

    return _train(run_dir, start, ["trainer.max_steps=2", "trainer.val_every_n_steps=100", "stage.grpo.dynamic_sampling=off", *args])


@pytest.mark.tier("integration")
def test_grpo_logs_the_engines_logprobs_against_the_trainers(tmp_path, sft_export):
    from test_grpo import SHORT, _rows

    _grpo(tmp_path, sft_export, SHORT)
    rows = _rows(tmp_path)
    assert len(rows) == 2
    for r in rows:  # the hf engine is the trainer's model: the same numbers up to the KV cache's rounding
        assert 0 <= r["rollout/logprob_diff_mean"] < 1e-4 and 0 <= r["rollout/logprob_diff_max"] < 1e-3, r
        assert abs(r["rollout/mismatch_kl"]) < 1e-6
        assert "rollout/tis_weight_mean" not in r  # TIS is off for hf by default


@pytest.mark.tier("integration")
def test_an_engine_sampling_at_another_temperature_shows_the_mismatch_and_tis_applies(tmp_path, sft_export):
    """The engine samples at temperature 2 while the trainer's log-probs assume 1: a real
    mismatch. Same seed, same rollouts: with TIS on the first update's loss is reweighted."""
    from test_grpo import SHORT, _rows

    off_policy = [*SHORT, "stage.rollout.engine_temperature=2.0", "seed=3"]
    _grpo(tmp_path / "tis", sft_export, [*off_policy, "stage.rollout.tis=true", "stage.rollout.tis_cap=2.0"])
    _grpo(tmp_path / "plain", sft_export, off_policy)
    tis, plain = _rows(tmp_path / "tis"), _rows(tmp_path / "plain")
    for r in tis:
        assert r["rollout/logprob_diff_mean"] > 0.1 and r["rollout/logprob_diff_max"] > 1.0, r
        assert r["rollout/mismatch_kl"] > 0.01
        assert 0 < r["rollout/tis_weight_mean"] <= 2.0 and r["rollout/tis_weight_mean"] != pytest.approx(1.0, abs=1e-3)
        assert 0 < r["rollout/tis_capped_frac"] < 1
    assert "rollout/tis_weight_mean" not in plain[0]
    # iteration 1: the same rollouts (same seed, same starting policy), one loss reweighted
    assert tis[0]["grpo/reward"] == plain[0]["grpo/reward"]
    assert tis[0]["rollout/logprob_diff_mean"] == pytest.approx(plain[0]["rollout/logprob_diff_mean"], rel=1e-5)
    assert tis[0]["grpo/pg_loss"] != pytest.approx(plain[0]["grpo/pg_loss"], abs=1e-4)
