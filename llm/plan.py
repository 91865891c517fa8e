"""Memory planner: ``xiulian plan model=llama_70b strategy=fsdp --gpu-memory 80GB --nodes 8``.

Predicts the bytes one rank holds while it trains -- parameters, gradients, optimizer state, the
strategy's own buffers, the activations of one micro-batch (with and without activation
checkpointing) and a fixed overhead -- for every strategy and precision, from the same config
``xiulian train`` reads (Hydra overrides: ``model=``, ``strategy=``, ``data.seq_len=``,
``data.micro_batch_size=``, ``trainer.precision=``, ``strategy.activation_checkpointing=``), and
recommends settings that fit a device's memory: micro-batch, activation checkpointing, offload,
tensor-parallel degree, or more nodes.

Everything below :func:`main` is pure arithmetic on the model's shape (no torch, no model built).
The counts come from what autograd saves in transformers' Llama and GPT-2 blocks under this
framework's loss (:func:`llm.losses.token_nll_sum`), read off with ``saved_tensors_hooks`` and
checked by ``tests/test_plan.py``; the state bytes per strategy are the ones
``trainer.memory_report=true`` measures (docs/sharding.md). ``python -m llm.bench.plan`` compares
the prediction with real runs.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

GIB = 2**30
MIB = 2**20
#: the strategies the planner knows; ``tensor_parallel`` > 1 is modelled for ``fsdp`` only
#: (FSDP2 x DTensor tensor parallelism on a 2-D mesh, which runs as ``strategy=fsdp_tp``)
STRATEGIES = ("single", "ddp", "deepspeed_zero1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload", "fsdp")
PRECISIONS = ("32-true", "bf16-mixed", "bf16-true")
#: fixed bytes per process that are no tensor of the model: on a GPU, the CUDA context, cuBLAS and
#: NCCL workspaces (a typical H100 figure; ``--overhead`` sets yours); on CPU, the RSS of an idle
#: process that has imported torch, Lightning, transformers and DeepSpeed and started its process
#: group (measured by ``python -m llm.bench.plan``: 560-600 MiB on this machine)
OVERHEAD = {"gpu": int(1.5 * GIB), "cpu": 580 * MIB}


@dataclass(frozen=True)
class Shape:
    """What the arithmetic needs of a model."""

    arch: str  # llama | gpt2
    n_layer: int
    d: int
    n_head: int
    n_kv_head: int
    f: int  # MLP width
    vocab: int
    max_seq_len: int
    tie: bool
    dropout: float = 0.0

    @property
    def kv(self) -> int:
        """Width of the keys (= of the values): kv heads x head size."""
        return self.n_kv_head * (self.d // self.n_head)


def shape_of(model: Any, vocab_size: int | None = None) -> Shape:
    """The :class:`Shape` of a ``ModelConfig`` (a preset; ``vocab_size`` when the preset leaves it
    to the tokenizer, padded to 64 as the model builder does)."""
    if getattr(model, "pretrained", None):
        raise ValueError(f"model={model.name}: the planner reads a preset's shape; a pretrained directory is not read (use a preset)")
    vocab = model.vocab_size or (int(math.ceil(vocab_size / 64) * 64) if vocab_size else None)
    if vocab is None:
        raise ValueError(f"model={model.name}: vocab_size is unset (it comes from the tokenizer); give --vocab or model.vocab_size")
    arch = str(model.arch)
    if arch == "llama":
        f = model.intermediate_size or int(math.ceil(int(2 * 4 * model.n_embd / 3) / 64) * 64)
    else:
        f = model.intermediate_size or 4 * model.n_embd
    return Shape(
        arch=arch,
        n_layer=model.n_layer,
        d=model.n_embd,
        n_head=model.n_head,
        n_kv_head=(model.n_kv_head or model.n_head) if arch == "llama" else model.n_head,
        f=f,
        vocab=vocab,
        max_seq_len=model.max_seq_len,
        tie=bool(model.tie_embeddings),
        dropout=float(model.dropout),
    )


# ============================================================================= parameters
def layer_params(s: Shape) -> int:
    """Parameters of one decoder layer."""
    d, f = s.d, s.f
    if s.arch == "llama":  # q, o: d x d; k, v: d x kv; gate, up, down: d x f; two RMSNorm weights
        return 2 * d * d + 2 * d * s.kv + 3 * d * f + 2 * d
    # GPT-2: ln_1, c_attn (d x 3d + bias), c_proj (d x d + bias), ln_2, c_fc (d x f + bias), c_proj (f x d + bias)
    return 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d)


def param_count(s: Shape) -> int:
    """Parameters of the whole model (a tied output head counted once), as ``numel()`` counts them."""
    emb = s.vocab * s.d
    head = 0 if s.tie else s.vocab * s.d
    if s.arch == "llama":
        return emb + s.n_layer * layer_params(s) + s.d + head  # + final RMSNorm
    return emb + s.max_seq_len * s.d + s.n_layer * layer_params(s) + 2 * s.d + head  # + positions, ln_f


def matmul_params(s: Shape) -> int:
    """Parameters that enter a matrix product (what autocast keeps a bf16 copy of)."""
    d, f = s.d, s.f
    per = 2 * d * d + 2 * d * s.kv + 3 * d * f if s.arch == "llama" else 4 * d * d + 2 * d * f
    return s.n_layer * per + s.vocab * s.d  # + the output head (tied or not)


# ============================================================================ activations
def _dtype_bytes(precision: str) -> tuple[int, int]:
    """(bytes of a matmul output, bytes of the residual stream and norm statistics)."""
    return {"32-true": (4, 4), "bf16-mixed": (2, 4), "bf16-true": (2, 2)}[precision]


def layer_activation_bytes(s: Shape, tokens: int, precision: str, device: str = "gpu", tensor_parallel: int = 1) -> int:
    """Bytes autograd saves for the backward of one decoder layer over ``tokens`` tokens
    (micro-batch x sequence length).

    Llama (per token; d width, kv key width, f MLP width): each RMSNorm saves its input and its
    normalised input in fp32 and its output (``32-true``: 3 x 4d) -- under ``bf16-mixed`` the
    output is saved as one bf16 copy per projection that reads it (autocast casts per call:
    3 for q/k/v, 2 for gate/up); attention saves the rotated q and k, v and its output; the
    SwiGLU MLP saves gate, SiLU(gate), up and their product (4f). ``32-true``: 32d + 8kv + 16f
    bytes; ``bf16-mixed``: 30d + 4kv + 8f; ``bf16-true`` (estimate): 20d + 4kv + 8f.

    GPT-2: LayerNorm inputs and outputs, the fused qkv, the attention output, GELU's four saved
    tensors and its output (5f); with dropout, one mask per dropout (fp32 on CPU, bytes on a GPU)
    and, on CPU, the math attention path (flash attention on CPU has no dropout) with the three
    T x T tensors per head (scores, mask, dropped scores) and copies of q and k.

    ``tensor_parallel`` (T > 1: ``strategy=fsdp_tp``, Llama only) splits the attention and MLP
    terms by heads and columns; its sequence parallelism splits the norms' inputs and normalised
    inputs (and statistics) by tokens, while the norms' outputs, gathered whole for the
    projections, are saved whole by them on every rank (``32-true``: 16d/T + 8d per token and layer
    for the norms; measured with ``saved_tensors_hooks`` on a 1 x 2 mesh)."""
    mm, res = _dtype_bytes(precision)
    d, f, kv, tp = s.d, s.f, s.kv, tensor_parallel
    if s.arch == "llama":
        # sharded: two RMSNorms' input and normalised input (fp32) and rsqrt; gathered: the norms'
        # outputs the projections save (bf16-mixed: one bf16 copy per projection, 3 + 2)
        if precision == "bf16-mixed":
            sharded, gathered = 2 * (4 * d + 4 * d) + 2 * 4, 3 * 2 * d + 2 * 2 * d
            split = (2 * d + 2 * kv + 2 * kv + 2 * d) + 4 * 2 * f
        elif precision == "32-true":
            sharded, gathered = 2 * (2 * 4 * d) + 2 * 4, 2 * 4 * d
            split = 4 * (d + kv + kv + d) + 4 * 4 * f
        else:  # bf16-true: the norms upcast to fp32 inside
            sharded, gathered = 2 * (4 * d + 2 * d) + 2 * 4, 2 * 2 * d
            split = 2 * (d + kv + kv + d) + 4 * 2 * f
        return tokens * (gathered + (sharded + split) // tp)
    # gpt2
    seq = s.max_seq_len  # the caller passes tokens = b x T; T x T terms need T itself
    mask = (4 if device == "cpu" else 1) if s.dropout > 0 else 0
    whole = res * 4 * d + 4 * 4 + 2 * mask * d  # ln_1 and ln_2 in/out, their mean/rstd, two residual dropout masks
    if device == "cpu" and s.dropout > 0:
        # math attention: copies of q and k, the fused qkv (a copy of v alone when the batch has
        # several rows), 3 x (heads x T) per token (scores, dropout mask, dropped scores), output copy
        qkv = 3 * d if tokens <= seq else d
        split = mm * (2 * d + qkv + d) + 4 * 3 * s.n_head * seq
    else:  # flash / memory-efficient attention: qkv and the output (+ logsumexp)
        split = mm * (3 * d + d) + 4 * s.n_head
    split += mm * 5 * f
    return tokens * (whole + split // tp)


def head_activation_bytes(s: Shape, tokens: int, precision: str, transient: bool = True, tensor_parallel: int = 1) -> int:
    """The final norm, the output head and the loss: the final norm's saved tensors and the
    log-softmax the cross-entropy saves (fp32: the loss upcasts the logits); with ``transient``,
    also what is alive beside them when the backward starts, the peak of a step: the gradients of
    the log-softmax and of the logits (fp32, V per token each; under bf16 the logits' gradient is
    cast to bf16 too). Under ``tensor_parallel`` the final norm's input and normalised input are
    split by tokens (sequence parallelism), its output and the logits are gathered whole."""
    mm, res = _dtype_bytes(precision)
    if s.arch == "llama":  # input and normalised input (sequence-sharded under TP), the output the head saves
        norm = 8 * s.d // tensor_parallel + (4 * s.d if precision == "32-true" else 2 * s.d)
    else:
        norm = 2 * res * s.d + 8
    logits = (8 * s.vocab + (0 if mm == 4 else 2 * s.vocab)) if transient else 0
    rope = 2 * 4 * (s.d // s.n_head) * s.max_seq_len if s.arch == "llama" else 0  # cos and sin per position, shared by the batch
    return tokens * (norm + 4 * s.vocab + logits + 8) + rope


def activation_bytes(
    s: Shape, micro_batch: int, seq_len: int, precision: str, checkpointing: bool, device: str = "gpu", tensor_parallel: int = 1
) -> int:
    """Peak activation bytes of one micro-batch: every layer's saved tensors plus the head's; with
    activation checkpointing, each layer keeps only its input (the residual stream; split by tokens
    under tensor parallelism) and one layer at a time is recomputed in the backward, after the
    head's backward has freed its tensors: the inputs plus the larger of the head and one layer
    (measured on tiny, whose head is larger than a layer: the sum over-predicted by 36%)."""
    tokens = micro_batch * seq_len
    s = replace(s, max_seq_len=seq_len)
    one = layer_activation_bytes(s, tokens, precision, device, tensor_parallel)
    _, res = _dtype_bytes(precision)
    if s.arch == "gpt2" and s.dropout > 0:
        res += 4 if device == "cpu" else 1  # the embedding dropout's mask
    head = head_activation_bytes(s, tokens, precision, tensor_parallel=tensor_parallel)
    if not checkpointing:  # the backward starts with every layer's saved tensors and the head's
        return s.n_layer * one + head
    # the layers' inputs (sequence-sharded under tensor parallelism), then the larger of the head's
    # backward and one recomputed layer: the head's tensors are freed before the last layer is recomputed
    return s.n_layer * tokens * res * s.d // tensor_parallel + max(head, one)


# ================================================================================= state
@dataclass
class Setting:
    """One way to run: strategy, world, precision, micro-batch and switches."""

    strategy: str = "fsdp"
    precision: str = "bf16-mixed"
    nodes: int = 1
    gpus_per_node: int = 8
    micro_batch: int = 1
    seq_len: int = 4096
    checkpointing: bool = False
    tensor_parallel: int = 1
    device: str = "gpu"

    @property
    def world(self) -> int:
        return 1 if self.strategy == "single" else self.nodes * self.gpus_per_node

    @property
    def dp(self) -> int:
        """Ranks the state is sharded over (world / tensor parallel degree)."""
        return max(1, self.world // self.tensor_parallel)


@dataclass
class Estimate:
    """Bytes of one rank, by role; ``host`` is what offloading puts in CPU memory instead."""

    params: int
    grads: int
    optimizer: int
    buffers: int
    activations: int
    overhead: int
    host: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def state(self) -> int:
        return self.params + self.grads + self.optimizer + self.buffers

    @property
    def total(self) -> int:
        return self.state + self.activations + self.overhead


def state_bytes(s: Shape, st: Setting) -> tuple[int, int, int, int, int]:
    """(params, grads, optimizer, buffers, host) bytes of one rank for a setting.

    ``single``/``ddp``/``fsdp`` keep the parameters in their training dtype (fp32 under ``32-true``
    and ``bf16-mixed``: autocast computes in bf16 from fp32 weights) with gradients alike and
    AdamW's two moments in the same dtype; FSDP divides all three by N. DeepSpeed (ZeRO 1/2/3)
    keeps the module's parameters in the compute dtype (bf16 under either bf16 precision), its
    optimizer holds an fp32 master copy of its partition beside the moments (12 bytes per
    parameter / N), gradients are partitioned (1/N) plus two reduce buckets of h² elements; ZeRO-3
    also partitions the parameters (measured in fp32: 20 bytes per parameter / N).
    ``deepspeed_zero3_offload`` moves parameters, gradients and optimizer state to host memory
    (``host``), with a gradient buffer of 4 bytes per parameter / N there (measured in fp32: 24 / N)."""
    n_p = param_count(s)
    name, dp, tp = st.strategy, st.dp, st.tensor_parallel
    if tp > 1 and name != "fsdp":
        raise ValueError(f"tensor_parallel={tp} with strategy={name}: tensor parallelism composes with fsdp only (fsdp_tp)")
    if name not in STRATEGIES:
        raise ValueError(f"strategy={name}: unknown (choose one of {', '.join(STRATEGIES)})")
    if st.precision not in PRECISIONS:
        raise ValueError(f"precision={st.precision}: the planner knows {', '.join(PRECISIONS)}")
    if name.startswith("deepspeed"):
        p = 2 if st.precision != "32-true" else 4
        bucket = 2 * s.d * s.d * p  # two reduce buckets of h² elements (``auto``)
        if name in ("deepspeed_zero1", "deepspeed_zero2"):
            return p * n_p, p * n_p // dp + bucket, 12 * n_p // dp, 0, 0
        if name == "deepspeed_zero3":
            return p * n_p // dp, p * n_p // dp, 12 * n_p // dp, 0, 0
        return 0, 0, 0, 0, (p + p + 12 + 4) * n_p // dp  # offload: all of it on the host, and a gradient buffer there
    p = 2 if st.precision == "bf16-true" else 4
    shard = dp * tp if name == "fsdp" else 1
    return p * n_p // shard, p * n_p // shard, 2 * p * n_p // shard, 0, 0


#: DeepSpeed's ``stage3_max_live_parameters`` default
MAX_LIVE = 10**9


def working_bytes(s: Shape, st: Setting) -> int:
    """Transient bytes beside the activations: the layers sharded strategies gather (FSDP: the
    running layer and the prefetched next one; ZeRO-3: up to ``stage3_max_live_parameters``, 1e9,
    of them stay gathered) and the bf16 weight copies autocast makes under ``bf16-mixed`` (saved for the
    backward: the whole model's matmul weights, also under FSDP, since autocast casts the gathered
    weights)."""
    lp = layer_params(s) // st.tensor_parallel
    out = 0
    if st.strategy == "fsdp" and st.dp > 1:
        p = 2 if st.precision == "bf16-true" else 4
        out += 2 * lp * p + lp * p  # two layers gathered, one layer's gradients before the reduce-scatter
    elif st.strategy.startswith("deepspeed_zero3") and st.dp > 1:
        # DeepSpeed keeps gathered parameters alive up to stage3_max_live_parameters (default 1e9
        # elements, not changed by the strategy): a model below that stays whole while it trains
        p = 4 if st.precision == "32-true" else 2
        out += p * min(param_count(s), MAX_LIVE) + lp * p
    if st.precision == "bf16-mixed" and not st.strategy.startswith("deepspeed"):
        out += 2 * matmul_params(s) // st.tensor_parallel
    return out


def estimate(s: Shape, st: Setting, overhead: int | None = None) -> Estimate:
    """Bytes of one rank training ``s`` with ``st``."""
    params, grads, opt, buffers, host = state_bytes(s, st)
    act = activation_bytes(s, st.micro_batch, st.seq_len, st.precision, st.checkpointing, st.device, st.tensor_parallel)
    work = working_bytes(s, st)
    ov = OVERHEAD[st.device] if overhead is None else overhead
    e = Estimate(params, grads, opt, buffers + work, act, ov, host)
    if host and st.device == "cpu":  # no separate host: offloaded state lives in the same memory
        e.buffers += host
        e.host = 0
    return e


# ======================================================================== recommendation
#: share of a device's memory left free for the caching allocator's fragmentation and short-lived
#: buffers the estimate does not name (``--headroom``)
HEADROOM = 0.1


def fits(e: Estimate, memory: int, headroom: float = HEADROOM) -> bool:
    """Whether the estimate stays within ``memory`` less ``headroom`` of it."""
    return e.total <= memory * (1 - headroom)


def tp_degrees(s: Shape, gpus_per_node: int) -> list[int]:
    """The tensor-parallel degrees ``strategy=fsdp_tp`` accepts for this shape within a node: 1, 2,
    4, 8 dividing the GPUs of a node and the heads, key/value heads, MLP width and vocabulary
    (what llm/strategy.py checks at start); Llama-shaped models only (GPT-2 has no TP plan)."""
    if s.arch != "llama":
        return [1]
    return [t for t in (1, 2, 4, 8) if t <= gpus_per_node and all(x % t == 0 for x in (gpus_per_node, s.n_head, s.n_kv_head, s.f, s.vocab))]


def overrides(st: Setting) -> str:
    """The ``xiulian train`` overrides (and world) that run a setting: ``strategy=fsdp_tp
    strategy.tensor_parallel=K`` for fsdp with tensor parallelism."""
    if st.strategy == "fsdp" and st.tensor_parallel > 1:
        out = [f"strategy=fsdp_tp strategy.tensor_parallel={st.tensor_parallel}"]
    else:
        out = [f"strategy={st.strategy}"]
    out += [f"data.micro_batch_size={st.micro_batch}", f"strategy.activation_checkpointing={'true' if st.checkpointing else 'false'}"]
    if st.strategy != "single":
        out.append(f"({st.nodes} x {st.gpus_per_node} ranks)")
    return " ".join(out)


def recommend(
    s: Shape,
    base: Setting,
    memory: int,
    strategies: tuple[str, ...] = STRATEGIES,
    overhead: int | None = None,
    headroom: float = HEADROOM,
) -> list[dict]:
    """For each strategy, the cheapest setting that fits ``memory`` bytes per device: first the
    largest micro-batch up to ``base.micro_batch`` without checkpointing, then with it; then (fsdp)
    tensor parallelism up to the GPUs of a node (the degrees of :func:`tp_degrees`; run as
    ``strategy=fsdp_tp``, :func:`overrides`); then more nodes (doubling, up to 64 x ``base.nodes``).
    Each row: the strategy, whether it fits, the setting and its estimate, or why not."""
    rows = []
    for name in strategies:
        if name == "single" and base.world > 1 and base.strategy != "single":
            continue
        tps = tp_degrees(s, base.gpus_per_node) if name == "fsdp" else [1]
        found = None
        for nodes in [base.nodes * 2**k for k in range(7)] if name != "single" else [1]:
            for tp in tps:
                for ckpt in (False, True):
                    mb = base.micro_batch
                    while mb >= 1 and found is None:
                        st = replace(base, strategy=name, nodes=nodes, micro_batch=mb, checkpointing=ckpt, tensor_parallel=tp)
                        e = estimate(s, st, overhead)
                        if fits(e, memory, headroom):
                            found = (st, e)
                        mb //= 2
                    if found:
                        break
                if found:
                    break
            if found:
                break
        if found:
            rows.append({"strategy": name, "fits": True, "setting": found[0], "estimate": found[1]})
        else:
            st = replace(base, strategy=name, micro_batch=1, checkpointing=True)
            rows.append({"strategy": name, "fits": False, "setting": st, "estimate": estimate(s, st, overhead)})
    return rows


def parse_bytes(text: str) -> int:
    """``80GB``, ``80GiB``, ``80G``, ``512MiB``, ``1.5e9``: bytes (GB = GiB here: devices are sold in
    GiB-sized memories, an "80 GB" H100 has 80 GiB)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", str(text))
    if not m:
        raise ValueError(f"{text!r}: a size such as 80GB, 80GiB or 512MiB")
    return int(float(m.group(1)) * 1024 ** " KMGT".index(m.group(2).upper() or " "))


def _gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def table(s: Shape, rows: list[dict], memory: int) -> str:
    """The recommendation as a Markdown table (GiB per rank)."""
    head = "| strategy | fits | nodes | micro-batch | act. ckpt | TP | params | grads | optimizer | buffers | activations | overhead | total | host |"
    out = [head, "|" + "---|" * 14]
    for r in rows:
        st, e = r["setting"], r["estimate"]
        cells = [
            st.strategy,
            "yes" if r["fits"] else "no",
            st.nodes,
            st.micro_batch,
            "on" if st.checkpointing else "off",
            st.tensor_parallel,
            *(_gib(x) for x in (e.params, e.grads, e.optimizer, e.buffers, e.activations, e.overhead, e.total, e.host)),
        ]
        out.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(out)


# ================================================================================== CLI
def main(argv: list[str] | None = None) -> None:
    import sys

    ap = argparse.ArgumentParser(
        prog="xiulian plan",
        description=(__doc__ or "").split("\n\n")[0] + " Hydra overrides as for `xiulian train`; bytes per rank in GiB.",
    )
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. model=llama_70b strategy=fsdp data.seq_len=4096")
    ap.add_argument("--gpu-memory", default="80GB", help="memory of one device (default 80GB)")
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpus-per-node", type=int, default=8)
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: plan CPU processes (RSS) instead of GPUs")
    ap.add_argument("--precision", default=None, help="default: trainer.precision, where auto means bf16-mixed on a GPU")
    ap.add_argument(
        "--tensor-parallel",
        type=int,
        default=1,
        help="tensor-parallel degree of the asked setting (fsdp; default: strategy.tensor_parallel of fsdp_tp)",
    )
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary size when the preset takes it from the tokenizer")
    ap.add_argument("--overhead", default=None, help="fixed bytes per process (default 1.5GiB on a GPU, 580MiB on CPU)")
    ap.add_argument("--headroom", type=float, default=HEADROOM, help="share of the memory kept free (default 0.1)")
    ap.add_argument("--all", action="store_true", help="every strategy, not only the asked one")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    from llm.bench.common import compose_config

    cfg = compose_config(args.overrides)
    s = shape_of(cfg.model, args.vocab or cfg.data.vocab_size)
    precision = args.precision or str(cfg.trainer.precision)
    if precision == "auto":
        precision = "bf16-mixed" if args.device == "gpu" else "32-true"
    name = str(cfg.strategy.name)
    name = "single" if name == "auto" else name
    tp = args.tensor_parallel
    if name == "fsdp_tp":  # FSDP2 x tensor parallelism: the planner's fsdp with strategy.tensor_parallel
        name, tp = "fsdp", tp if tp > 1 else int(cfg.strategy.tensor_parallel)
    base = Setting(
        strategy=name,
        precision=precision,
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        micro_batch=int(cfg.data.micro_batch_size),
        seq_len=int(cfg.data.seq_len),
        checkpointing=bool(cfg.strategy.activation_checkpointing),
        tensor_parallel=tp,
        device=args.device,
    )
    memory = parse_bytes(args.gpu_memory)
    overhead = parse_bytes(args.overhead) if args.overhead else None
    asked = estimate(s, base, overhead)
    print(
        f"model={cfg.model.name}: {param_count(s) / 1e9:.2f}B parameters, {s.n_layer} layers; {base.world} ranks "
        f"({base.nodes} x {base.gpus_per_node}), seq {base.seq_len}, precision {precision}, {memory / GIB:.0f} GiB per device, "
        f"{args.headroom:.0%} of it kept free\n"
    )
    print(f"asked: {overrides(base)}:")
    print(table(s, [{"setting": base, "estimate": asked, "fits": fits(asked, memory, args.headroom)}], memory))
    print("\nrecommended (largest micro-batch that fits, checkpointing only when needed, then TP, then nodes):")
    rows = recommend(s, base, memory, STRATEGIES if args.all else (name,), overhead, args.headroom)
    print(table(s, rows, memory))
    print("\nto run the ones that fit (xiulian train overrides):")
    for r in rows:
        if r["fits"]:
            print(f"  {overrides(r['setting'])}")


if __name__ == "__main__":
    main()
