"""The memory planner (llm/plan.py): formulas against hand-worked values and against what the real
models hold, the recommendation on hand cases, the CLI, and a real run against the prediction."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from llm import plan
from llm.plan import Setting, Shape

from conftest import CONF, ROOT, compose

# a small Llama worked by hand: d=64, 4 heads of 16, 2 KV heads (kv width 32), MLP 128, vocab 256
SMALL = Shape(arch="llama", n_layer=2, d=64, n_head=4, n_kv_head=2, f=128, vocab=256, max_seq_len=32, tie=False)
# embedding 256*64 = 16384; per layer q,o 2*64*64 = 8192, k,v 2*64*32 = 4096, MLP 3*64*128 = 24576,
# norms 2*64 = 128 -> 36992; two layers 73984; final norm 64; head 16384
SMALL_PARAMS = 16384 + 2 * 36992 + 64 + 16384  # 106816


def test_param_count_by_hand():
    assert plan.param_count(SMALL) == SMALL_PARAMS == 106816
    assert plan.param_count(replace(SMALL, tie=True)) == SMALL_PARAMS - 16384


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "hf"))
def test_param_count_equals_the_built_models_numel(preset):
    from llm.model.build import build_model

    cfg = compose([f"model={preset}"])
    with torch.device("meta"):
        model = build_model(cfg.model, 4096)
    assert plan.param_count(plan.shape_of(cfg.model, 4096)) == sum(p.numel() for p in model.parameters())


def test_state_bytes_per_strategy_and_precision_by_hand():
    n = SMALL_PARAMS
    ddp = Setting(strategy="ddp", precision="32-true", nodes=1, gpus_per_node=4)
    assert plan.state_bytes(SMALL, ddp) == (4 * n, 4 * n, 8 * n, 0, 0)  # 16 bytes per parameter, whole on every rank
    assert plan.state_bytes(SMALL, replace(ddp, precision="bf16-mixed")) == (4 * n, 4 * n, 8 * n, 0, 0)  # fp32 weights under autocast
    assert plan.state_bytes(SMALL, replace(ddp, precision="bf16-true")) == (2 * n, 2 * n, 4 * n, 0, 0)
    fsdp = replace(ddp, strategy="fsdp")
    assert plan.state_bytes(SMALL, fsdp) == (n, n, 2 * n, 0, 0)  # 16 / 4 bytes per parameter
    # 8 ranks as data 4 x tensor 2: each holds 1/8 of 16 bytes per parameter
    assert plan.state_bytes(SMALL, replace(fsdp, tensor_parallel=2, gpus_per_node=8)) == (n // 2, n // 2, n, 0, 0)
    bucket = 2 * 64 * 64  # two reduce buckets of h^2 elements
    z2 = replace(ddp, strategy="deepspeed_zero2", precision="bf16-mixed")
    assert plan.state_bytes(SMALL, z2) == (2 * n, 2 * n // 4 + 2 * bucket, 12 * n // 4, 0, 0)
    z3 = replace(z2, strategy="deepspeed_zero3", precision="32-true")
    assert plan.state_bytes(SMALL, z3) == (n, n, 3 * n, 0, 0)  # 20 bytes per parameter / 4
    off = replace(z3, strategy="deepspeed_zero3_offload", precision="bf16-mixed")
    assert plan.state_bytes(SMALL, off) == (0, 0, 0, 0, (2 + 2 + 12 + 4) * n // 4)
    with pytest.raises(ValueError, match="tensor parallelism composes with fsdp only"):
        plan.state_bytes(SMALL, replace(ddp, tensor_parallel=2))


def test_activation_bytes_by_hand():
    # 32-true, per token and layer: 4 * (8d + 2kv + 4f) + 8 = 4 * (512 + 64 + 512) + 8 = 4360
    assert plan.layer_activation_bytes(SMALL, 10, "32-true") == 43600
    # bf16-mixed: 30d + 4kv + 8f + 8 = 1920 + 128 + 1024 + 8 = 3080
    assert plan.layer_activation_bytes(SMALL, 10, "bf16-mixed") == 30800
    # head, 32-true: norm 12d = 768, log-softmax 4V = 1024, ids 8 per token; rope 2 * 4 * 16 per position
    assert plan.head_activation_bytes(SMALL, 10, "32-true", transient=False) == 10 * (768 + 1024 + 8) + 128 * 32
    assert plan.head_activation_bytes(SMALL, 10, "32-true") == plan.head_activation_bytes(SMALL, 10, "32-true", False) + 10 * 8 * 256
    full = plan.activation_bytes(SMALL, 2, 16, "32-true", checkpointing=False)
    ckpt = plan.activation_bytes(SMALL, 2, 16, "32-true", checkpointing=True)
    head = plan.head_activation_bytes(replace(SMALL, max_seq_len=16), 32, "32-true")
    assert full == 2 * 32 * 4360 + head
    assert 32 * 4360 > head and ckpt == 2 * 32 * 4 * 64 + 32 * 4360  # each layer's input, then one layer recomputed after the head
    wide = replace(SMALL, vocab=4096)  # the head's backward (log-softmax and two V-sized gradients) outweighs a layer
    head = plan.head_activation_bytes(replace(wide, max_seq_len=16), 32, "32-true")
    assert head > 32 * 4360 and plan.activation_bytes(wide, 2, 16, "32-true", checkpointing=True) == 2 * 32 * 4 * 64 + head


def test_tensor_parallel_activations_by_hand():
    """Under fsdp_tp (sequence parallelism) the norms' inputs are split by tokens, their outputs
    saved whole by the projections; heads and MLP columns split T ways."""
    d, kv, f, tp = 64, 32, 128, 2
    # 32-true per token and layer: norm outputs 8d whole; (norm inputs and normalised 16d + rsqrt 8 + 8d + 8kv + 16f) / T
    assert plan.layer_activation_bytes(SMALL, 10, "32-true", tensor_parallel=tp) == 10 * (
        8 * d + (16 * d + 8 + 8 * d + 8 * kv + 16 * f) // tp
    )
    # bf16-mixed: five bf16 copies of the gathered norm outputs (q, k, v, gate, up) whole
    assert plan.layer_activation_bytes(SMALL, 10, "bf16-mixed", tensor_parallel=tp) == 10 * (
        10 * d + (16 * d + 8 + 4 * d + 4 * kv + 8 * f) // tp
    )
    for precision in plan.PRECISIONS:  # T = 1 is the unsplit model
        assert plan.layer_activation_bytes(SMALL, 10, precision, tensor_parallel=1) == plan.layer_activation_bytes(SMALL, 10, precision)
    # the final norm: input and normalised input split, its output (read by the head) and the logits whole
    one, two = (plan.head_activation_bytes(SMALL, 10, "32-true", tensor_parallel=t) for t in (1, 2))
    assert one - two == 10 * 8 * d // 2
    # activation checkpointing: each layer keeps its input, a sequence shard of the residual stream
    full, ckpt = (plan.activation_bytes(SMALL, 2, 16, "32-true", c, tensor_parallel=tp) for c in (False, True))
    layer = plan.layer_activation_bytes(SMALL, 32, "32-true", tensor_parallel=tp)
    head = plan.head_activation_bytes(replace(SMALL, max_seq_len=16), 32, "32-true", tensor_parallel=tp)
    assert full == 2 * layer + head and ckpt == 2 * 32 * 4 * d // tp + max(layer, head)


def _saved_bytes(model: torch.nn.Module, ids: torch.Tensor, autocast: bool) -> int:
    """Bytes autograd saves for the backward in one forward and loss (parameters excluded)."""
    from llm.losses import token_nll_sum

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in params and st.nbytes():
            seen[st.data_ptr()] = st.nbytes()
        return t

    ac = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ac, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(input_ids=ids, use_cache=False)
        token_nll_sum(out.logits, ids)
    return sum(seen.values())


@pytest.mark.parametrize(
    "arch,dropout,precision",
    [("llama", 0.0, "32-true"), ("llama", 0.0, "bf16-mixed"), ("gpt2", 0.0, "32-true"), ("gpt2", 0.1, "32-true")],
)
@pytest.mark.parametrize("rows", [1, 2])
def test_activations_equal_what_autograd_saves(arch, dropout, precision, rows):
    """The activation formula against the tensors autograd really saves in transformers' blocks
    under this framework's loss (a real forward on CPU, counted with saved_tensors_hooks)."""
    from llm.config import ModelConfig
    from llm.model.build import build_model

    cfg = ModelConfig(name="t", arch=arch, n_layer=3, n_embd=128, n_head=4, n_kv_head=2 if arch == "llama" else None)
    cfg.max_seq_len, cfg.vocab_size, cfg.dropout = 128, 1024, dropout
    torch.manual_seed(0)
    model = build_model(cfg).train()
    seq = 128 // rows
    s = replace(plan.shape_of(cfg), max_seq_len=seq)
    tokens = 128
    got = _saved_bytes(model, torch.randint(0, 1024, (rows, seq)), precision == "bf16-mixed")
    want = s.n_layer * plan.layer_activation_bytes(s, tokens, precision, "cpu") + plan.head_activation_bytes(s, tokens, precision, False)
    if dropout:
        want += tokens * 4 * s.d  # the embedding dropout's mask (fp32 on CPU)
    if precision == "bf16-mixed":
        want += 2 * plan.matmul_params(s)  # autocast's bf16 weight copies, saved for the backward
    assert abs(want / got - 1) < 0.01, (want, got)


@pytest.mark.slow
def test_tensor_parallel_activations_equal_what_autograd_saves():
    """The activation formula under tensor (and sequence) parallelism against the tensors autograd
    saves on one rank of a real 2-rank split (tests/tp_saved.py under torchrun), fp32 and bf16-mixed."""
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(ROOT / "tests" / "tp_saved.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert r.returncode == 0, r.stderr[-6000:]
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert [x["precision"] for x in rows] == ["32-true", "bf16-mixed"]
    s = Shape(arch="llama", n_layer=3, d=128, n_head=4, n_kv_head=2, f=384, vocab=1024, max_seq_len=64, tie=False)
    assert plan.shape_of(compose(["model=tiny", "model.n_layer=3", "model.max_seq_len=64"]).model, 1024) == s  # tests/tp_saved.py's model
    for x in rows:
        tokens, tp = 128, x["tp"]
        want = s.n_layer * plan.layer_activation_bytes(s, tokens, x["precision"], "cpu", tp)
        want += plan.head_activation_bytes(s, tokens, x["precision"], False, tp)
        if x["precision"] == "bf16-mixed":
            want += 2 * plan.matmul_params(s) // tp  # autocast's bf16 copies of this rank's weight shards
        assert abs(want / x["saved"] - 1) < 0.01, (x, want)


def test_recommendation_on_hand_cases():
    base = Setting(strategy="ddp", precision="32-true", nodes=1, gpus_per_node=2, micro_batch=4, seq_len=32, device="cpu")

    def total(**kw):
        return plan.estimate(SMALL, replace(base, **kw), overhead=0).total

    def rec(memory):
        (row,) = plan.recommend(SMALL, base, memory, ("ddp",), overhead=0, headroom=0)
        return row["fits"], row["setting"].micro_batch, row["setting"].checkpointing

    assert rec(total()) == (True, 4, False)  # exactly fits as asked
    assert rec(total() - 1) == (True, 2, False)  # one byte short: half the micro-batch
    assert total(micro_batch=1, checkpointing=True) < total(micro_batch=1)
    fit, _, ckpt = rec(total(micro_batch=1) - 1)  # no micro-batch fits without checkpointing
    assert fit and ckpt
    assert rec(total(micro_batch=1, checkpointing=True) - 1)[0] is False  # ddp never shards: no setting fits
    # fsdp: more nodes shard the state until it fits
    (row,) = plan.recommend(SMALL, replace(base, strategy="fsdp"), total(strategy="fsdp", nodes=4), ("fsdp",), overhead=0, headroom=0)
    assert row["fits"] and row["setting"].nodes <= 4
    assert plan.fits(plan.Estimate(90, 0, 0, 0, 0, 0), 100, headroom=0.1) and not plan.fits(plan.Estimate(91, 0, 0, 0, 0, 0), 100, 0.1)


def test_tensor_parallel_recommendation_names_fsdp_tp_with_a_degree_it_accepts(capsys):
    """llama_70b on 8 x 80 GB at 4096 x 4 tokens: fsdp fits only with tensor parallelism, and the
    recommendation is a valid ``xiulian train`` override set ``strategy=fsdp_tp
    strategy.tensor_parallel=K`` with K among the degrees fsdp_tp accepts for the shape."""
    s = plan.shape_of(compose(["model=llama_70b"]).model)
    assert plan.tp_degrees(s, 8) == [1, 2, 4, 8]
    assert plan.tp_degrees(s, 4) == [1, 2, 4]
    assert plan.tp_degrees(replace(s, n_kv_head=2), 8) == [1, 2]  # K must divide the key/value heads
    assert plan.tp_degrees(plan.shape_of(compose(["model=gpt1_117m"]).model), 8) == [1]  # no TP plan for GPT-2
    base = Setting(strategy="fsdp", precision="bf16-mixed", nodes=8, gpus_per_node=8, micro_batch=4, seq_len=4096)
    memory = plan.parse_bytes("80GB")
    assert not plan.fits(plan.estimate(s, replace(base, micro_batch=1, checkpointing=True)), memory)  # no TP: does not fit
    (row,) = plan.recommend(s, base, memory, ("fsdp",))
    st = row["setting"]
    assert row["fits"] and st.tensor_parallel in (2, 4, 8) and st.nodes == 8
    # one degree less does not fit at any micro-batch, with checkpointing
    lower = replace(st, tensor_parallel=st.tensor_parallel // 2, micro_batch=1, checkpointing=True)
    assert not plan.fits(plan.estimate(s, lower), memory)
    text = plan.overrides(st)
    assert text.startswith(f"strategy=fsdp_tp strategy.tensor_parallel={st.tensor_parallel} ")
    cfg = compose(["model=llama_70b", *text.split(" (")[0].split()])  # the overrides compose into a valid config
    assert cfg.strategy.name == "fsdp_tp" and cfg.strategy.tensor_parallel == st.tensor_parallel
    assert cfg.data.micro_batch_size == st.micro_batch and cfg.strategy.activation_checkpointing == st.checkpointing
    assert plan.overrides(replace(st, tensor_parallel=1)).startswith("strategy=fsdp data.")
    # the CLI reads strategy=fsdp_tp as fsdp with its tensor_parallel, and prints the override to run
    plan.main(
        [
            "model=llama_70b",
            "strategy=fsdp_tp",
            "strategy.tensor_parallel=8",
            "data.seq_len=4096",
            "data.micro_batch_size=4",
            "--nodes",
            "8",
        ]
    )
    out = capsys.readouterr().out
    asked = [ln for ln in out.splitlines() if ln.startswith("| fsdp |")][0].split("|")
    assert asked[6].strip() == "8"  # the TP column of the asked setting
    assert "asked: strategy=fsdp_tp strategy.tensor_parallel=8 data.micro_batch_size=4 " in out
    assert "  strategy=fsdp_tp strategy.tensor_parallel=" in out


def test_bench_runs_fsdp_tp_as_the_planners_fsdp_with_its_degree():
    """``python -m llm.bench.plan --strategies fsdp_tp,fsdp_tp4``: the run's strategy and override,
    and the prediction it is compared with."""
    from llm.bench.plan import predict, spec

    assert spec("fsdp") == ("fsdp", [], "fsdp", 1)
    assert spec("fsdp_tp") == ("fsdp_tp", ["strategy.tensor_parallel=2"], "fsdp", 2)
    assert spec("fsdp_tp4") == ("fsdp_tp", ["strategy.tensor_parallel=4"], "fsdp", 4)
    with pytest.raises(ValueError, match="fsdp_tpK"):
        spec("fsdp_tpx")
    tp, fsdp = predict("tiny", "fsdp_tp", 4, 256, 8, 1024), predict("tiny", "fsdp", 4, 256, 8, 1024)
    # the state is sharded over all 4 ranks either way; the gathered layer and the activations are split two ways
    assert (tp.params, tp.grads, tp.optimizer) == (fsdp.params, fsdp.grads, fsdp.optimizer)
    assert tp.buffers < fsdp.buffers and tp.activations < fsdp.activations


def test_parse_bytes():
    assert plan.parse_bytes("80GB") == plan.parse_bytes("80GiB") == plan.parse_bytes("80G") == 80 * 2**30
    assert plan.parse_bytes("512MiB") == 512 * 2**20 and plan.parse_bytes("1e9") == 10**9
    with pytest.raises(ValueError, match="a size such as"):
        plan.parse_bytes("lots")


@pytest.mark.tier("integration")
def test_cli_plans_llama_70b():
    r = subprocess.run(
        [sys.executable, "-m", "llm.cli", "plan", "model=llama_70b", "strategy=fsdp", "--gpu-memory", "80GB", "--nodes", "8", "--all"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "model=llama_70b: 68.98B parameters" in r.stdout
    assert "| strategy | fits | nodes | micro-batch |" in r.stdout
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| deepspeed_zero3 |")]
    assert rows and "| yes |" in rows[0]  # ZeRO-3 fits 70B on 64 x 80 GB
    assert any(ln.startswith("| ddp | no |") for ln in r.stdout.splitlines())  # DDP never does


@pytest.mark.slow
def test_prediction_within_tolerance_of_a_measured_tiny_run(tmp_path):
    """A real tiny pretraining run under torchrun: the planner's state bytes within 10% of the
    tensors the rank holds, and its step peak within 10% of the peak RSS above the process's own
    non-tensor base (docs/planning.md)."""
    out = tmp_path / "plan.json"
    r = subprocess.run(
        [sys.executable, "-m", "llm.bench.plan", "--quick", "--nproc", "2", "--strategies", "fsdp", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    (row,) = json.loads(out.read_text())["rows"]
    assert abs(row["state_ratio"] - 1) < 0.1, row
    assert abs(row["own_ratio"] - 1) < 0.1, row


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_summary(tmp_path):
    """launch/gpu-check.sh on CPU: every step at tiny sizes, the markdown and JSON summaries."""
    env = {**os.environ, "PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", str(ROOT / "launch" / "gpu-check.sh"), "--dry-run", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert summary["dry_run"] and set(steps) == {
        "pretrain",
        "pretrain_compiled",
        "fsdp",
        "deepspeed_zero2",
        "deepspeed_zero3",
        "sft_lora",
        "ppo",
        "grpo_vllm",
    }
    assert steps.pop("grpo_vllm")["status"] == "skipped"  # vLLM needs CUDA
    assert all(s["status"] == "ok" for s in steps.values()), steps
    assert steps["pretrain"]["tokens_per_s"] > 0 and steps["pretrain"]["peak_bytes"] > 0 and steps["pretrain"]["predicted_bytes"] > 0
    assert summary["sdpa"]["math"] == "ok"
    assert "| pretrain | ok |" in (tmp_path / "gpu-check.md").read_text()
