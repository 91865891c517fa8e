"""Typed configuration (Hydra structured configs).

Every YAML file under ``conf/`` is validated against these dataclasses: a misspelt key or a
value of the wrong type fails at start-up with a message naming the key.  Only
``llm/train.py`` sees the whole :class:`Config`; every other component receives its own piece.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


class Choice(str, Enum):
    """A closed set of strings. A field of such a type rejects any other value when the config is
    composed (the error names the key and the allowed values); its members compare equal to, hash
    and print as their strings, so code reads them as plain strings."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def _choice(name: str, *values: str) -> type[Choice]:
    return Choice(name, [(v, v) for v in values])  # type: ignore[return-value]


Arch = _choice("Arch", "llama", "gpt2")
ChatFormat = _choice("ChatFormat", "auto", "openai", "alpaca", "sharegpt", "task")
OnBadRow = _choice("OnBadRow", "error", "skip")
OnTruncated = _choice("OnTruncated", "skip", "error")
PaddingSide = _choice("PaddingSide", "right", "left")
LoraBias = _choice("LoraBias", "none", "all", "lora_only")
KLEstimator = _choice("KLEstimator", "k1", "k2", "k3", "abs")
Critic = _choice("Critic", "shared", "separate")
GroupEstimator = _choice("GroupEstimator", "grpo", "dr_grpo", "rloo", "reinforce_pp")
LossAgg = _choice("LossAgg", "token", "sequence", "dr_grpo")
KLPlacement = _choice("KLPlacement", "loss", "reward", "off")
DynamicSampling = _choice("DynamicSampling", "drop", "resample", "off")
RolloutEngineName = _choice("RolloutEngineName", "hf", "vllm")
PrefLoss = _choice("PrefLoss", "dpo", "ipo", "simpo", "kto")
StrategyName = _choice(
    "StrategyName",
    "auto",
    "single",
    "ddp",
    "deepspeed_zero1",
    "deepspeed_zero2",
    "deepspeed_zero3",
    "deepspeed_zero3_offload",
    "fsdp",
    "fsdp_tp",
)
Accelerator = _choice("Accelerator", "auto", "cpu", "gpu")
OnNonfinite = _choice("OnNonfinite", "stop", "skip")
TaskType = _choice("TaskType", "perplexity", "choice", "generate", "verified")
FewshotSampler = _choice("FewshotSampler", "first_n", "random")
WandbMode = _choice("WandbMode", "auto", "online", "offline", "disabled")


@dataclass
class ModelConfig:
    """A transformers causal LM: built from a size preset, or loaded from a directory."""

    name: str = MISSING
    """Preset name (for logs and the export's README)."""
    arch: Arch = Arch.llama
    """``llama`` (RoPE, RMSNorm, SwiGLU, grouped-query attention) or ``gpt2`` (learned positions,
    LayerNorm, GELU MLP)."""
    pretrained: Optional[str] = None
    """A Hugging Face model directory to start from (``from_pretrained``); the preset's shape
    fields are then ignored."""
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_kv_head: Optional[int] = None
    """Key/value heads for grouped-query attention; ``None`` means ``n_head`` (plain MHA)."""
    intermediate_size: Optional[int] = None
    """MLP width; ``None`` means 4 * n_embd (gpt2) or the Llama 8/3 rule rounded to 64."""
    max_seq_len: int = 256
    vocab_size: Optional[int] = None
    """``None``: take it from the tokenizer (padded up to a multiple of 64)."""
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_std: float = 0.02
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False
    """Off by default: a checkpoint directory never runs code it ships unless you say so."""


@dataclass
class ChatDatasetConfig:
    """One source of conversations for SFT (an entry of ``data.datasets``)."""

    path: str = MISSING
    """A ``.jsonl``/``.json`` file, or ``builtin:python-qa`` (questions and answers made from
    the documentation that ships with CPython)."""
    format: ChatFormat = ChatFormat.auto
    """``auto`` (by the keys of each record), ``openai`` (messages), ``alpaca``
    (instruction/input/output), ``sharegpt`` (conversations/from/value), ``task`` (a labelled
    record turned into an instruction by ``template``)."""
    weight: float = 1.0
    """Times each conversation is used per epoch; a fraction takes a fixed random subset."""
    template: Optional[str] = None
    """``format=task``: a named FLAN-style template (sentiment, classify, topic, qa, summarize,
    translate) or a format string over the record's fields, e.g. ``"Is this spam?\n{text}"``."""
    answer: Optional[str] = None
    """``format=task``: the answer format (default ``{label}``)."""
    system: Optional[str] = None
    """A system message put before conversations that have none."""
    name: Optional[str] = None


@dataclass
class DataConfig:
    """Pretraining: text -> tokenizer -> WebDataset token shards -> packed sequences.
    SFT: conversations (``datasets``/``sources``) -> chat template -> assistant-only labels."""

    name: str = MISSING
    sources: list[str] = field(default_factory=list)
    """Text to prepare: files (.txt/.md/.rst one document each, .jsonl with ``text_field``),
    directories of them, or ``builtin:python-docs`` (English documentation shipped inside
    CPython). Ignored when ``shards`` is set."""
    shards: Optional[str] = None
    """A directory written by ``python -m llm.data.prepare`` (manifest.json + tars)."""
    tokenizer: Optional[str] = None
    """A tokenizer directory to use instead of training one on ``sources``."""
    cache_dir: Optional[str] = None
    """Where the tokenizer and shards prepared from ``sources`` are kept and reused; ``None``:
    ``$XIULIAN_CACHE`` (default ``~/.cache/xiulian``)/data/<hash of sources and settings>."""
    vocab_size: int = 4096
    shard_max_tokens: int = 1048576
    val_fraction: float = 0.02
    seq_len: int = 256
    micro_batch_size: int = 8
    num_workers: int = 1
    shuffle_block: int = 64
    val_batches: Optional[int] = 8
    """Validation micro-batches per rank at each validation (``None``: the whole split)."""
    skip_corrupt: bool = False
    """``False``: a corrupt shard stops the run with its name. ``True``: shards are validated
    at start, bad ones are excluded, named in a warning and counted in the final report."""
    seed: int = 1234
    # ---- conversations (stage=sft) ----
    datasets: list[ChatDatasetConfig] = field(default_factory=list)
    """SFT mixture: several datasets with weights and formats. ``sources`` is the short form
    (files, weight 1, format auto)."""
    val_datasets: list[ChatDatasetConfig] = field(default_factory=list)
    """Held-out conversations; empty: ``val_fraction`` of the training conversations."""
    packing: bool = True
    """Pack several conversations into one ``seq_len`` row (positions restart per
    conversation, no attention across them); ``False``: one conversation per row, padded."""
    on_bad_row: OnBadRow = OnBadRow.error
    """``error``: a bad record stops the run naming file, line and field; ``skip``: counted by
    reason in the data report."""
    on_truncated: OnTruncated = OnTruncated.skip
    """A conversation whose assistant tokens are all cut off by ``seq_len``: ``skip`` (counted and
    reported) or ``error``. Conversations only partly cut are kept and counted."""
    warn_truncated_share: float = 0.1
    """Warn, naming the count, the share and the files, when more than this share of a split's
    conversations (SFT) or preference pairs (reward model, DPO) are cut at ``seq_len`` (kept or
    dropped); the count, share and files are in the data report either way. 0: warn at any cut."""
    chat_template: str = "auto"
    """``auto``: the checkpoint's own template, else the framework default; ``default``: always
    the framework default. The default reuses the turn markers the tokenizer already has (ChatML
    ``<|im_start|>``/``<|im_end|>``, Llama 3 headers and ``<|eot_id|>``, Gemma
    ``<start_of_turn>``/``<end_of_turn>``, the framework's ``<|user|>``...``<|end|>``), and adds
    the framework's four tokens only when it has none. Anything else is the user's own template:
    an inline Jinja string when it contains ``{{`` or ``{%``, else the path of a Jinja file (which
    must exist). A user's template is rendered on a probe conversation at start, and the
    assistant's answers must be found in it. Whatever the template, a tokenizer that starts its
    texts with a BOS token (``tokenizer("a")`` begins with ``bos_token_id``: Llama, Mistral,
    Gemma; not GPT-2 nor the framework's own tokenizer) gets it first exactly once, in training
    and at generation."""
    padding_side: PaddingSide = PaddingSide.right
    """Reward model and DPO batches: ``right`` or ``left`` padding (both read the right tokens:
    positions and the reward's read-out come from the attention mask)."""
    # ---- tasks with verifiable answers (stage=grpo) ----
    tasks: Optional[str] = None
    """stage=grpo: the prompts and their verifiers. ``builtin:<name>`` (``arithmetic``,
    ``countdown``, ``sort``, ``reverse``; generated from ``seed``, validated on the generator's
    held-out split) or a tasks ``.jsonl`` file (llm/rl/tasks.py; validated on ``val_tasks``, else
    ``val_fraction`` of the file's tasks). ``None``: stage=grpo reads prompts as stage=ppo does
    (``sources``/``datasets``) and needs ``stage.reward.function`` or ``stage.reward.model``."""
    tasks_size: int = 1000
    """``builtin:`` tasks: how many distinct training problems to generate."""
    tasks_val_size: int = 64
    """``builtin:`` tasks: how many distinct held-out problems to validate on."""
    tasks_held_out: float = 0.2
    """``builtin:`` tasks: the fraction of all problems that belong to the held-out split (by a
    hash of the problem, so the splits never share one)."""
    tasks_params: dict[str, Any] = field(default_factory=dict)
    """``builtin:`` tasks: the generator's difficulty, e.g. ``{digits: 1}`` for arithmetic,
    ``{count: 3}`` for countdown, ``{length: 4}`` for sort and reverse."""
    val_tasks: Optional[str] = None
    """A tasks ``.jsonl`` file of held-out tasks for a ``tasks`` file (``None``: ``val_fraction``
    of its tasks, chosen by ``seed``)."""

    def __post_init__(self) -> None:
        _check(0 <= self.val_fraction < 1, f"data.val_fraction={self.val_fraction}: a fraction in [0, 1)")
        _check(0 <= self.warn_truncated_share <= 1, f"data.warn_truncated_share={self.warn_truncated_share}: a share in [0, 1]")
        ct = str(self.chat_template)
        _check(
            ct in ("auto", "default") or "{{" in ct or "{%" in ct or Path(ct).expanduser().is_file(),
            f"data.chat_template={ct!r}: no such file (expected auto, default, the path of a Jinja file, "
            "or an inline Jinja template containing {{ or {%)",
        )
        _check(
            self.tasks_size > 0 and self.tasks_val_size >= 0 and 0 < self.tasks_held_out < 1,
            f"data.tasks_size={self.tasks_size}, data.tasks_val_size={self.tasks_val_size}, data.tasks_held_out="
            f"{self.tasks_held_out}: need tasks_size > 0, tasks_val_size >= 0 and 0 < tasks_held_out < 1",
        )
        _check(
            self.seq_len > 0 and self.micro_batch_size > 0,
            f"data.seq_len={self.seq_len}, data.micro_batch_size={self.micro_batch_size}: both must be positive",
        )


@dataclass
class OptimConfig:
    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    """Cosine decays to ``lr * min_lr_ratio``."""
    warmup_steps: int = 100
    weight_decay: float = 0.1
    """Applied to matrices (``p.dim() >= 2``); never to norms, biases."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global-norm clipping; 0 disables it."""
    fused: Optional[bool] = None
    """Fused AdamW kernel (``None``: on, on CUDA and CPU; about 20% faster than the for-loop
    implementation for SmolLM2-135M on CPU)."""


@dataclass
class LoraConfig:
    """LoRA adapters through PEFT: the base weights stay frozen, only the adapters train."""

    enabled: bool = False
    name: str = "default"
    """The adapter's name: saved to ``<run_dir>/adapters/<name>``; chat selects it by name."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module name suffixes (``q_proj``, ``v_proj``...) or ``all-linear`` (every linear layer but
    the output head, as QLoRA recommends)."""
    bias: LoraBias = LoraBias.none


@dataclass
class RewardFunctionConfig:
    """One rule reward of ``stage.reward.functions``, a component with its own weight."""

    function: str = MISSING
    """A built-in (``contains_word``, ``short``, ``length``, ``think_format``, ``regex``;
    llm/rl/rewards.py) or ``package.module:function`` taking (prompts, responses, **kwargs)."""
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    name: Optional[str] = None
    """The component's name, logged as ``grpo/reward/<name>`` (default: the function's name)."""


@dataclass
class JudgeConfig:
    """An LLM judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (llm/rl/judge.py):
    one request per answer, its reply read for a score, normalised to [0, 1]."""

    url: Optional[str] = None
    """The endpoint: a base URL (``http://host:8000/v1``) or the full ``.../chat/completions`` URL
    (None: no judge). Checked for a TCP connection at start."""
    model: str = "default"
    """The ``model`` field of each request."""
    prompt_template: Optional[str] = None
    """The user message; ``{prompt}``, ``{response}`` (required), ``{answer}`` (the task's answer,
    else empty) and ``{max_score}`` are replaced. None: a built-in template asking for
    ``Score: <0..max_score>``."""
    max_score: float = 10.0
    """The top of the judge's scale: its score is divided by this; a score outside
    [0, max_score] or no number counts as unparseable and scores 0."""
    api_key_env: Optional[str] = None
    """The environment variable holding the API key (sent as a Bearer token), if any."""
    timeout: float = 60.0
    """Seconds per HTTP request."""
    retries: int = 3
    """Retries of a request after 429, 5xx, a connection error or a timeout, with exponential
    backoff (1, 2, 4 ... s); after the last, training stops with an error naming the URL."""
    max_concurrency: int = 8
    """Requests in flight at once (a thread pool)."""
    max_tokens: int = 16
    """The judge's reply length limit (a score needs few tokens)."""
    weight: float = 1.0
    """The ``judge`` component's weight in the reward."""

    def __post_init__(self) -> None:
        _check(self.max_score > 0, f"stage.reward.judge.max_score={self.max_score}: must be positive")
        _check(
            self.timeout > 0 and self.retries >= 0 and self.max_concurrency >= 1 and self.max_tokens >= 1,
            f"stage.reward.judge: timeout={self.timeout} > 0, retries={self.retries} >= 0, "
            f"max_concurrency={self.max_concurrency} >= 1, max_tokens={self.max_tokens} >= 1",
        )
        _check(
            self.prompt_template is None or "{response}" in self.prompt_template,
            "stage.reward.judge.prompt_template must contain {response} (the answer to grade)",
        )


@dataclass
class RewardConfig:
    """Where PPO's and GRPO's reward comes from: a reward model, Python functions, an LLM judge,
    or several (summed with weights)."""

    model: Optional[str] = None
    """A reward-model export (``stage=rm``'s ``export``: loads as AutoModelForSequenceClassification)."""
    function: Optional[str] = None
    """A rule-based / verifiable reward: ``contains_word``, ``short`` (llm/rl/rewards.py) or
    ``package.module:function`` taking (prompts, responses, **kwargs) -> list of floats."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    model_weight: float = 1.0
    function_weight: float = 1.0
    functions: list[RewardFunctionConfig] = field(default_factory=list)
    """More rule rewards, each a component with its own weight and kwargs, beside ``function``:
    ``'stage.reward.functions=[{function: length, weight: 0.5, kwargs: {max_chars: 80}}]'``."""
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    """An LLM judge's score as the ``judge`` component (off unless ``judge.url`` is set)."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of a response that does not end with the end-of-turn token
    within ``max_new_tokens`` (0: off)."""


@dataclass
class PPOConfig:
    """One PPO iteration = one training step: sample ``data.micro_batch_size`` prompts per rank,
    generate, score, then ``epochs`` passes of minibatch updates. ``trainer.max_steps`` counts
    iterations."""

    max_prompt_tokens: int = 128
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    epochs: int = 2
    minibatch_size: int = 4
    gamma: float = 1.0
    lam: float = 0.95
    clip_range: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.1
    entropy_coef: float = 0.0
    whiten_advantages: bool = True
    kl_coef: float = 0.05
    """beta: the per-token KL penalty's coefficient (the start value when ``adaptive_kl``)."""
    kl_estimator: KLEstimator = KLEstimator.k1
    """k1 (log-ratio, InstructGPT), k2, k3 or abs (llm/rl/kl.py)."""
    adaptive_kl: bool = False
    """Ziegler et al.'s controller: move beta so the KL per sequence approaches ``target_kl``."""
    target_kl: float = 6.0
    kl_horizon: int = 10000
    early_stop_kl: Optional[float] = 0.5
    """Stop an iteration's updates when the approximate KL between the new and the rollout
    policy (mean per token) exceeds this; ``None``: never."""
    critic: Critic = Critic.shared
    """``shared``: a value head on the policy's backbone; ``separate``: a critic network of its
    own (``critic_model``, default the reward model, else the policy's start point)."""
    critic_model: Optional[str] = None
    log_samples_every: int = 10
    """Every N iterations, log a table of prompts, responses and scores (W&B and samples.jsonl)."""

    def __post_init__(self) -> None:
        _check(
            self.epochs >= 1 and self.minibatch_size >= 1,
            f"stage.ppo.epochs={self.epochs}, stage.ppo.minibatch_size={self.minibatch_size}: both must be at least 1",
        )
        _check(self.temperature > 0, f"stage.ppo.temperature={self.temperature}: must be positive (rollouts sample)")
        _check(0 < self.top_p <= 1, f"stage.ppo.top_p={self.top_p}: must be in (0, 1]")


@dataclass
class GRPOConfig:
    """Group-based policy gradient without a critic (GRPO, Dr. GRPO, RLOO, REINFORCE++, DAPO's
    and GSPO's options; llm/rl/group.py). One iteration = one training step: each of the
    ``data.micro_batch_size`` prompts of a rank is answered ``group_size`` times by sampling, every
    answer is scored, advantages come from its group, then ``epochs`` x ``minibatches`` clipped
    policy-gradient updates. ``trainer.max_steps`` counts iterations."""

    group_size: int = 8
    """G: sampled answers per prompt (at least 2: the baseline is the group)."""
    estimator: GroupEstimator = GroupEstimator.grpo
    """The advantage: ``grpo`` ((r - mean) / std of the group), ``dr_grpo`` (r - mean), ``rloo``
    (r - mean of the other answers) or ``reinforce_pp`` (r - mean, whitened over the batch)."""
    loss_agg: LossAgg = LossAgg.token
    """How per-token losses become one: ``token`` (every token of the batch alike, DAPO),
    ``sequence`` (mean per answer, then over answers: GRPO's original) or ``dr_grpo`` (sum over
    answers x ``max_new_tokens``: no length bias)."""
    eps_low: float = 0.2
    """The ratio is clipped below at ``1 - eps_low``."""
    eps_high: Optional[float] = None
    """... and above at ``1 + eps_high`` (``None``: ``eps_low``). DAPO's clip-higher: 0.28."""
    gspo: bool = False
    """GSPO: one length-normalised ratio per answer instead of one per token (use small bounds,
    e.g. ``eps_low=3e-4 eps_high=4e-4``, and ``loss_agg=sequence``)."""
    kl: KLPlacement = KLPlacement.loss
    """Where the KL to the reference goes: ``loss`` (GRPO: ``kl_coef`` x the estimate, aggregated
    like the loss), ``reward`` (subtracted from each answer's reward before the group baseline) or
    ``off`` (DAPO, Dr. GRPO: no reference at all, no reference forward pass)."""
    kl_coef: float = 0.04
    """beta, the KL term's weight (``kl=off`` ignores it; 0 keeps the reference for logging)."""
    kl_estimator: KLEstimator = KLEstimator.k3
    """k1, k2, k3 (GRPO's, unbiased and >= 0) or abs (llm/rl/kl.py)."""
    dynamic_sampling: DynamicSampling = DynamicSampling.drop
    """``drop``: groups whose answers all got the same reward leave the loss (they have no
    advantage; no prompts are sampled to replace them; an iteration with none left makes no
    update); ``resample``: DAPO's refill: each rank answers extra training prompts, a batch of them
    per round, until its batch is full of informative groups or ``max_resample_rounds`` rounds
    have run (then the batch's own uninformative groups fill it and leave the loss); ``off``: they
    stay (their tokens count in the ``token`` normaliser)."""
    max_resample_rounds: int = 3
    """``dynamic_sampling=resample``: at most this many extra rounds of ``micro_batch_size``
    prompts (x ``group_size`` answers) per iteration (DAPO's ``max_num_gen_batches`` less one).
    Every rank runs the same number of rounds (sharded generation is collective)."""
    overlong_cache: int = 0
    """DAPO's soft overlong penalty: answers longer than ``max_new_tokens - overlong_cache``
    tokens lose up to 1 reward, linearly, -1 at ``max_new_tokens`` (0: off)."""
    overlong_filter: bool = False
    """DAPO's overlong filter: answers cut at ``max_new_tokens`` before their end-of-turn token
    leave the loss."""
    correct_weight: float = 1.0
    """The verifier's reward (1 for a right answer, else 0; needs ``data.tasks``)."""
    format_weight: float = 0.0
    """Reward for giving an answer in the asked form (a ``\\boxed{}`` or an ``Answer:`` line),
    right or wrong (needs ``data.tasks``)."""
    sandbox_timeout_s: float = 10.0
    """Code tasks (verifier ``code``): wall-clock seconds for one answer and all its tests in the
    sandbox (llm/rl/sandbox.py; each test also has 2 s of its own)."""
    sandbox_memory_mb: int = 512
    """Code tasks: the sandbox's memory limit (address space, MiB) per answer."""
    epochs: int = 1
    """Passes over an iteration's answers (1: on-policy, the ratio is 1 in the first update)."""
    minibatches: int = 1
    """Updates per pass: the answers are shuffled and split into this many minibatches."""
    max_prompt_tokens: int = 128
    """Longer prompts are left out (``data.on_truncated``)."""
    max_new_tokens: int = 64
    temperature: float = 1.0
    """Sampling temperature of the rollouts; log-probs are taken at the same temperature."""
    top_p: float = 1.0
    top_k: int = 0
    log_samples_every: int = 10
    """Every N iterations, log prompts, answers and rewards (W&B and samples.jsonl)."""
    env: Optional[str] = None
    """Multi-turn episodes with tools (llm/rl/env.py): ``calculator`` (arithmetic through
    ``<tool>calculator: EXPR</tool>``) or ``python`` (a Python interpreter in the code sandbox, and
    the calculator). The tool output is appended as a turn that carries no loss; an episode ends
    on a final answer, a reply without a tool call, or ``max_turns``. ``None``: one answer per
    prompt. ``max_new_tokens`` then bounds each reply."""
    max_turns: int = 4
    """With ``env``: the most assistant turns of an episode (a tool call in the last is not run)."""
    val_samples: int = 0
    """Validation: n answers sampled per held-out task (at ``temperature``/``top_p``/``top_k``,
    seeded) for ``val/pass@k`` (0: off; greedy ``val/accuracy`` is logged either way)."""
    val_pass_k: list[int] = field(default_factory=lambda: [1])
    """Validation: the k of ``val/pass@k`` (unbiased estimator, llm/eval/passk.py), each
    ``1 <= k <= val_samples``."""

    def __post_init__(self) -> None:
        _check(self.max_turns >= 1, f"stage.grpo.max_turns={self.max_turns}: must be at least 1")
        _check(
            not (self.env and self.overlong_cache),
            f"stage.grpo.overlong_cache={self.overlong_cache} with stage.grpo.env={self.env}: the overlong penalty counts one "
            "answer against max_new_tokens, and an episode has several replies; leave overlong_cache=0",
        )
        _check(self.group_size >= 2, f"stage.grpo.group_size={self.group_size}: at least 2 (the baseline comes from the group)")
        _check(
            self.epochs >= 1 and self.minibatches >= 1,
            f"stage.grpo.epochs={self.epochs}, stage.grpo.minibatches={self.minibatches}: both must be at least 1",
        )
        _check(
            self.eps_low >= 0 and (self.eps_high is None or self.eps_high >= 0),
            f"stage.grpo.eps_low={self.eps_low}, eps_high={self.eps_high}: clip bounds must be >= 0",
        )
        _check(self.kl_coef >= 0, f"stage.grpo.kl_coef={self.kl_coef}: must be >= 0")
        _check(self.max_resample_rounds >= 0, f"stage.grpo.max_resample_rounds={self.max_resample_rounds}: must be >= 0")
        _check(
            self.sandbox_timeout_s > 0 and self.sandbox_memory_mb >= 64,
            f"stage.grpo.sandbox_timeout_s={self.sandbox_timeout_s} must be positive, sandbox_memory_mb={self.sandbox_memory_mb} at least 64",
        )
        _check(self.max_new_tokens >= 1, f"stage.grpo.max_new_tokens={self.max_new_tokens}: must be at least 1")
        _check(
            0 <= self.overlong_cache <= self.max_new_tokens,
            f"stage.grpo.overlong_cache={self.overlong_cache}: between 0 (off) and max_new_tokens={self.max_new_tokens}",
        )
        _check(self.temperature > 0, f"stage.grpo.temperature={self.temperature}: must be positive (rollouts sample)")
        _check(0 < self.top_p <= 1, f"stage.grpo.top_p={self.top_p}: must be in (0, 1]")
        _check(self.val_samples >= 0, f"stage.grpo.val_samples={self.val_samples}: must be >= 0 (0: no val/pass@k)")
        _check(
            not self.val_samples or all(1 <= k <= self.val_samples for k in self.val_pass_k),
            f"stage.grpo.val_pass_k={list(self.val_pass_k)}: each k must be in 1..stage.grpo.val_samples={self.val_samples} "
            "(pass@k needs at least k answers per task)",
        )


@dataclass
class RolloutConfig:
    """The engine that generates PPO's and GRPO's rollouts (llm/rl/engines.py), the check of its
    log-probs against the trainer's, and the truncated importance-sampling correction."""

    engine: RolloutEngineName = RolloutEngineName.hf
    """``hf``: transformers' ``generate`` on the policy itself (llm/model/engine.py, KV cache, no
    second copy); ``vllm``: a vLLM engine colocated on the same GPU (``pip install -e .[vllm]``;
    CUDA only, one process per GPU, not under FSDP), its weights reloaded from the policy after
    each iteration and its memory released while the policy trains."""
    logprob_check: bool = True
    """The engine returns the log-prob of each token it sampled, and each iteration logs how far
    they are from the trainer's recomputed ones (``rollout/logprob_diff_mean``, ``_max``,
    ``rollout/mismatch_kl``)."""
    tis: Optional[bool] = None
    """Truncated importance sampling (Yao et al. 2025): each token's policy-gradient loss is
    multiplied by ``min(pi_trainer / pi_engine, tis_cap)`` of the sampled token, correcting for
    rollouts that came from a slightly different distribution than the trainer's (``None``: on
    for ``vllm``, off for ``hf``, whose log-probs match the trainer's)."""
    tis_cap: float = 2.0
    """C, the cap of the importance weight (verl's ``tis_imp_ratio_cap``)."""
    engine_temperature: Optional[float] = None
    """Sample at this temperature instead of the stage's (``None``: the stage's). A diagnostic:
    rollouts then deliberately come from another distribution than the one the trainer's
    log-probs assume, which the log-prob check shows and TIS corrects."""
    vllm_gpu_memory_utilization: float = 0.3
    """vLLM: the fraction of the GPU's memory it may take (weights and KV cache) while awake."""
    vllm_sleep_level: int = 1
    """vLLM sleep while the policy trains: 1 moves its weights to CPU memory and frees its KV
    cache; 2 discards both (less CPU memory; the weights are reloaded from the policy anyway)."""
    vllm_dtype: str = "auto"
    """vLLM's weight dtype (``auto``: the checkpoint's; ``bfloat16``, ``float16``, ``float32``)."""
    zero3_gather: bool = True
    """Under DeepSpeed ZeRO-3 (``hf`` engine): gather the policy's whole weights once for each
    generation call (each rank holds the whole policy while it generates, as DeepSpeed-Chat's
    hybrid engine and TRL do) instead of one layer at a time at every generated token (a
    collective per layer and token, ranks kept in step with ``synced_gpus``; generation's memory
    stays ZeRO-3's). ``false`` is for models whose whole weights do not fit one device."""

    def __post_init__(self) -> None:
        _check(self.tis_cap >= 1.0, f"stage.rollout.tis_cap={self.tis_cap}: must be at least 1 (it caps an importance weight)")
        _check(
            self.engine_temperature is None or self.engine_temperature > 0,
            f"stage.rollout.engine_temperature={self.engine_temperature}: must be positive (or null: the stage's temperature)",
        )
        _check(
            0 < self.vllm_gpu_memory_utilization < 1,
            f"stage.rollout.vllm_gpu_memory_utilization={self.vllm_gpu_memory_utilization}: must be in (0, 1)",
        )
        _check(self.vllm_sleep_level in (1, 2), f"stage.rollout.vllm_sleep_level={self.vllm_sleep_level}: 1 or 2")
        _check(
            not (self.tis and not self.logprob_check),
            "stage.rollout.tis=true needs stage.rollout.logprob_check=true (the weights come from the engine's log-probs)",
        )


@dataclass
class DPOConfig:
    """Preference optimisation without RL (llm/losses.py, docs/rlhf.md). Every loss trains on
    ``data`` preference pairs; ``kto`` also on unpaired thumbs-up/down records."""

    loss: PrefLoss = PrefLoss.dpo
    """``dpo`` (``-log sigmoid`` of the reward margin; cDPO with ``label_smoothing``), ``ipo``
    (squared loss pulling the log-ratio margin to ``1 / (2 beta)``: no overfitting to
    deterministic preferences), ``simpo`` (reference-free: the length-normalised log-prob is the
    reward, a target margin ``gamma``; no reference model at all) or ``kto`` (unpaired
    desirable/undesirable answers against a KL reference point)."""
    beta: Optional[float] = None
    """The reward scale (IPO's tau). ``None``: the loss's usual value, 0.1 for dpo, ipo and kto,
    2.0 for simpo (its rewards are per-token averages, so it needs a larger one)."""
    label_smoothing: float = 0.0
    """cDPO's eps in [0, 0.5): the share of pairs assumed to be labelled the wrong way round
    (``dpo`` and ``simpo`` only)."""
    gamma: Optional[float] = None
    """SimPO's target reward margin (absolute; TRL's ``gamma_beta_ratio`` is ``gamma / beta``).
    ``None``: 0.5. ``simpo`` only."""
    length_norm: Optional[bool] = None
    """Divide each answer's summed log-prob by its number of tokens before the loss. ``None``: on
    for ``simpo`` (its definition), off for the others (``true`` with ``ipo`` is TRL's IPO)."""
    desirable_weight: float = 1.0
    """KTO's lambda_D, the weight of a thumbs-up example's loss (``kto`` only). Choose the weights
    so that ``desirable_weight * n_desirable / (undesirable_weight * n_undesirable)`` lies in
    [1, 4/3] (the paper's advice; the data report logs the counts)."""
    undesirable_weight: float = 1.0
    """KTO's lambda_U, the weight of a thumbs-down example's loss (``kto`` only)."""
    precompute_ref: bool = False
    """Compute the reference's log-probs of every pair once before training and keep only those
    numbers (no second model in memory, e.g. under ZeRO-3); kept in checkpoints for resume."""

    def __post_init__(self) -> None:
        loss = str(self.loss)
        _check(self.beta is None or self.beta > 0, f"stage.dpo.beta={self.beta}: must be positive")
        _check(0 <= self.label_smoothing < 0.5, f"stage.dpo.label_smoothing={self.label_smoothing}: must be in [0, 0.5)")
        _check(
            self.label_smoothing == 0 or loss in ("dpo", "simpo"),
            f"stage.dpo.label_smoothing={self.label_smoothing} with stage.dpo.loss={loss}: label smoothing (cDPO) applies to dpo and simpo only",
        )
        _check(self.gamma is None or loss == "simpo", f"stage.dpo.gamma={self.gamma} with stage.dpo.loss={loss}: gamma is SimPO's margin")
        _check(
            (self.desirable_weight == 1 and self.undesirable_weight == 1) or loss == "kto",
            f"stage.dpo.desirable_weight={self.desirable_weight}, undesirable_weight={self.undesirable_weight} with "
            f"stage.dpo.loss={loss}: the weights are KTO's",
        )
        _check(
            self.desirable_weight > 0 and self.undesirable_weight > 0,
            f"stage.dpo.desirable_weight={self.desirable_weight}, undesirable_weight={self.undesirable_weight}: both must be positive",
        )
        _check(
            not (self.precompute_ref and loss == "simpo"),
            "stage.dpo.precompute_ref=true with stage.dpo.loss=simpo: SimPO has no reference model to precompute",
        )


@dataclass
class StageConfig:
    name: str = MISSING
    """pretrain, sft, rm (reward model), ppo, dpo, grpo."""
    random_init: bool = False
    """Start from random weights when ``model.pretrained`` is unset. Pretraining sets it; a
    fine-tuning stage refuses to start without a checkpoint unless you set it explicitly."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    grad_accum: int = 1
    """Micro-batches per optimizer step. The loss is the sum of token losses over all
    micro-batches and ranks divided by their total number of real tokens."""
    sample_every_n_steps: int = 0
    """Log a few greedy continuations every N steps (0: only at the end)."""
    sample_prompts: list[str] = field(default_factory=lambda: ["The "])
    sample_max_new_tokens: int = 48
    reward: RewardConfig = field(default_factory=RewardConfig)
    """stage=ppo: the reward; stage=grpo: the function and reward-model parts of its reward."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """stage=ppo and stage=grpo: the rollout engine, its log-prob check and TIS."""


@dataclass
class StrategyConfig:
    name: StrategyName = StrategyName.auto
    """``single`` (one device), ``ddp`` (replicas), ``deepspeed_zero1`` (optimizer state sharded),
    ``deepspeed_zero2`` (+ gradients), ``deepspeed_zero3`` (+ parameters),
    ``deepspeed_zero3_offload`` (ZeRO-3 with optimizer state and parameters in CPU memory) or
    ``fsdp`` (PyTorch FSDP2: parameters, gradients and optimizer state sharded per decoder layer) or
    ``fsdp_tp`` (FSDP2 over the data-parallel dimension of a 2-D mesh, tensor and sequence
    parallelism over the other: ``tensor_parallel``)."""
    accelerator: Accelerator = Accelerator.auto
    devices: Any = "auto"
    num_nodes: int = 1
    process_group_backend: Optional[str] = None
    """``None``: nccl on CUDA, gloo on CPU."""
    find_unused_parameters: bool = False
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass (transformers' gradient
    checkpointing, non-reentrant): activation memory falls from O(layers) to O(1) layers for
    about a third more compute. Any strategy."""
    offload_optimizer: bool = False
    """DeepSpeed: optimizer state and its step in CPU memory (DeepSpeed's CPU Adam)."""
    offload_params: bool = False
    """DeepSpeed ZeRO-3: parameters in CPU memory, fetched layer by layer."""
    deepspeed_config: Any = None
    """Keys merged over the DeepSpeed config the strategy writes (bucket sizes, overlap_comm, ...):
    the same names as a DeepSpeed JSON config."""
    sharded_init: bool = True
    """Start without the whole model in any process: the model is built on the meta device,
    sharded (FSDP; or turned into ZeRO-3 partitions a block at a time), and each rank fills only its shard, reading only its slice of each tensor of a
    ``model.pretrained`` checkpoint (safetensors, one file or sharded with an index) or
    initialising one block at a time with a generator seeded from (``seed``, block name), so the
    weights are the same whatever the number of ranks, and the same under every strategy.
    Falls back to building the whole model (saying why) with LoRA, embeddings resized for new
    tokens, ``model.trust_remote_code`` or a checkpoint without safetensors. ``false``: every rank
    builds the whole model first (transformers' own initialisation; the earlier behaviour)."""
    timeout_minutes: Optional[float] = None
    """Collective timeout (``None``: torch's 30 minutes). Under torchrun and Slurm a dead rank ends
    the job at once (the launcher watches its processes); under Lightning's own launcher the
    surviving ranks wait in their next collective until this timeout."""

    tensor_parallel: int = 1
    """``fsdp_tp``: ranks per tensor-parallel group (the ``tensor_parallel`` dimension of the
    2-D mesh; ``data_parallel`` is the world size divided by it). Each decoder layer's attention
    heads and MLP columns are split over the group (Megatron's column/row split) and the
    activations between them along the sequence (sequence parallelism); FSDP2 shards the rest over
    the data-parallel dimension. Must divide the world size and the model's attention heads,
    key/value heads, MLP width and vocabulary."""

    def __post_init__(self) -> None:
        _check(self.tensor_parallel >= 1, f"strategy.tensor_parallel={self.tensor_parallel}: must be at least 1")
        _check(
            self.tensor_parallel == 1 or self.name == "fsdp_tp",
            f"strategy.tensor_parallel={self.tensor_parallel} under strategy={self.name}: tensor parallelism composes with FSDP "
            "only; use strategy=fsdp_tp",
        )
        if isinstance(self.devices, int) and self.name == "fsdp_tp":
            world = self.devices * self.num_nodes
            _check(
                world % self.tensor_parallel == 0,
                f"strategy.tensor_parallel={self.tensor_parallel} does not divide the world size {world} "
                f"(strategy.devices={self.devices} x strategy.num_nodes={self.num_nodes})",
            )
        _check(
            not self.offload_params or self.name in ("deepspeed_zero3", "deepspeed_zero3_offload"),
            f"strategy.offload_params needs ZeRO-3 (strategy={self.name}): use strategy=deepspeed_zero3_offload",
        )


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_epochs: int = -1
    precision: str = "auto"
    """``auto``: bf16-mixed on a CUDA device that supports it, else 32-true."""
    val_every_n_steps: int = 200
    val_before_train: Optional[bool] = None
    """Validate once before the first step (the "before" figure); ``None``: on for fine-tuning
    stages, off for pretraining."""
    log_every_n_steps: int = 10
    ckpt_every_n_steps: int = 200
    ckpt_keep: int = 2
    fast_dev_run: int = 0
    overfit_batches: int = 0
    """> 0: train on the first batch only (repeated), no validation; loss must go to ~0."""
    deterministic: bool = False
    compile: bool = False
    peak_flops: Optional[float] = None
    """Peak FLOP/s of one device for MFU; ``None``: a table for known GPUs, a measured matmul
    rate on CPU."""
    progress_bar: bool = True
    num_sanity_val_steps: int = 0
    on_nonfinite: OnNonfinite = OnNonfinite.stop
    """A NaN or inf loss or gradient norm: ``stop`` (before the update: the weights and the last
    checkpoint stay good; the error names the step, epoch, batch and rank) or ``skip`` (drop that
    update, log a warning and ``train/skipped_steps``, go on with the next batch)."""
    max_skipped_steps: int = 10
    """``on_nonfinite=skip``: stop anyway after this many skipped updates in one run."""
    memory_report: bool = False
    """Count, on every rank, the bytes held in parameters, gradients, optimizer state and other
    tensors at the second optimizer step; written to ``memory_per_rank.json`` (callback
    ``StateMemory``; ``python -m llm.bench.strategies`` compares strategies with it)."""
    nan_at_step: Optional[int] = None
    """Fault injection for tests: the loss of the step that starts after this many optimizer
    steps becomes NaN (once)."""
    crash_at_step: Optional[int] = None
    """Fault injection for tests: the process SIGKILLs itself when this optimizer step begins."""

    def __post_init__(self) -> None:
        _check(self.max_skipped_steps >= 0, f"trainer.max_skipped_steps={self.max_skipped_steps}: must be at least 0")


@dataclass
class EvalTaskConfig:
    """One evaluation task (``llm/eval/core.py``). Records are JSON lines; field names below."""

    name: str = MISSING
    type: TaskType = TaskType.choice
    """``perplexity`` (held-out text), ``choice`` (log-likelihood of each option, the
    lm-evaluation-harness way; few-shot classification is a choice task with ``shots > 0``)
    or ``generate`` (greedy answer, exact match) or ``verified`` (tasks checked by their verifier,
    ``llm/rl/tasks.py``: greedy accuracy and pass@k; ``llm/eval/verified.py``)."""
    path: Optional[str] = None
    """A ``.jsonl`` file, or ``builtin:<name>`` for a task shipped in ``llm/eval/tasks``.
    ``verified``: a tasks ``.jsonl`` file (GRPO's format, ``data.tasks``) or ``builtin:<name>``, a
    generator of ``llm/rl/tasks.py`` (its held-out ``test`` split)."""
    sources: list[str] = field(default_factory=list)
    """``perplexity``: text sources as in ``data.sources`` (files, directories, ``.jsonl``,
    ``builtin:python-docs``, ``builtin:zen-of-python``)."""
    text_field: str = "text"
    query_field: str = "query"
    choices_field: str = "choices"
    answer_field: str = "answer"
    """The gold answer: an index into the choices or the choice's text (``generate``: a string or
    a list of accepted strings)."""
    choices: list[str] = field(default_factory=list)
    """Options shared by every record (a classification task's labels) when records have none."""
    description: str = ""
    template: str = "{query}"
    """How a record becomes a prompt (``str.format`` over the record's fields)."""
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    shots: int = 0
    fewshot_path: Optional[str] = None
    """Where the k examples come from (``None``: the task's own records, never the query itself)."""
    fewshot_sampler: FewshotSampler = FewshotSampler.first_n
    """``first_n`` (the first k records, lm-eval's ``first_n``) or ``random`` (seeded, per query)."""
    seed: int = 1234
    """The few-shot sampler's seed; ``verified``: the built-in generator's and the sampling's."""
    limit: Optional[int] = None
    """Evaluate at most N records (``verified`` with ``builtin:<name>``: the problems generated,
    ``None``: 100)."""
    max_new_tokens: int = 32
    stop: list[str] = field(default_factory=lambda: ["\n"])
    chat: bool = False
    """``generate``, ``verified``: render the prompt as a user turn with the model's chat template
    (``xiulian eval --tasks``: on when the tokenizer has one)."""
    ignore_case: bool = True
    extract: Optional[str] = None
    """``generate``: a regular expression; the answer is its first group (or whole match) in the
    output, e.g. ``(\\w+)\\W*$`` for the last word of "The capital of France is Paris."."""
    max_length: Optional[int] = None
    """Longest sequence scored at once (``None``: the model's ``max_position_embeddings``;
    ``perplexity``: 2048 tokens, or the model's context if shorter)."""
    stride: Optional[int] = None
    """``perplexity``: new tokens predicted per window after the first (``None``: ``max_length``,
    disjoint windows); smaller gives each token more context at more compute."""
    bos_per_window: bool = True
    """``perplexity``: put the prefix token (BOS, else EOS) in front of every window, not only the
    document's first; a model trained with BOS at position 0 scores far worse without it."""
    samples: int = 0
    """``verified``: n, the answers sampled per problem for pass@k (0: greedy answers only)."""
    pass_k: list[int] = field(default_factory=list)
    """``verified``: the k of pass@k, each ``1 <= k <= samples`` (pass@1 is reported whenever
    ``samples > 0``)."""
    temperature: float = 1.0
    """``verified``: the sampling temperature of the ``samples`` answers."""
    top_p: float = 1.0
    """``verified``: nucleus sampling of the ``samples`` answers (1.0: off)."""
    params: dict[str, Any] = field(default_factory=dict)
    """``verified`` with ``builtin:<name>``: the generator's difficulty, as ``data.tasks_params``
    (e.g. ``{digits: 1}``)."""
    held_out: float = 0.2
    """``verified`` with ``builtin:<name>``: the held-out fraction, as ``data.tasks_held_out`` (the
    same value gives the same test split GRPO validates on, never a training problem)."""


@dataclass
class EvalConfig:
    """An evaluation suite: tasks run by ``python -m llm.eval`` and by training (results go to the
    loggers as ``eval/<task>/<metric>`` and to ``eval_results.json`` beside the export)."""

    name: str = "none"
    tasks: list[EvalTaskConfig] = field(default_factory=list)
    every_n_steps: int = 0
    """During training, every N optimizer steps (0: only at the end)."""
    at_end: bool = True
    batch_size: int = 8


@dataclass
class LoggerConfig:
    wandb: bool = False
    project: str = "xiulian"
    entity: Optional[str] = None
    mode: WandbMode = WandbMode.auto
    """W&B mode: ``auto`` = online if an API key is configured, else offline (never hangs)."""
    tags: list[str] = field(default_factory=list)


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    stage: StageConfig = MISSING
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1234
    run_dir: Optional[str] = None
    """``None``: Hydra's run directory (``outputs/<date>/<time>``, or ``hydra.run.dir=...``)."""
    ckpt_path: Optional[str] = None
    """Resume: ``last`` (the newest checkpoint in ``run_dir``), or a path to a .ckpt."""
    export: bool = True
    """Write the Hugging Face export to ``run_dir/export`` at the end."""
    export_max_shard_size: str = "5GB"
    """Largest weight file of the export (``"5GB"``, ``"500MB"``: decimal units, as transformers
    reads them). A model under it is one ``model.safetensors``; a larger one is written as
    ``model-00001-of-0000N.safetensors`` with ``model.safetensors.index.json``. Under ZeRO-3 and
    FSDP the shards are written as the layers are gathered, so no process holds the whole model."""
    weights_only: bool = True
    """Checkpoints of every strategy load without arbitrary unpickling (:mod:`llm.safeload`): tensors
    and plain data only. ``false`` trusts the checkpoint and loads it unchecked (logged)."""

    def __post_init__(self) -> None:  # the fields' own checks ran in their __post_init__
        _check(
            self.model.pretrained or self.data.seq_len <= self.model.max_seq_len,
            f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len={self.model.max_seq_len}",
        )
        try:
            ok = size_bytes(self.export_max_shard_size) > 0
        except ValueError:
            ok = False
        _check(ok, f"export_max_shard_size={self.export_max_shard_size!r}: a size such as 5GB, 500MB or 10KB")


_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}


def size_bytes(size: int | str) -> int:
    """Bytes of ``"5GB"``, ``"500MB"``, ``"10KB"`` (decimal units, as transformers and
    huggingface_hub read ``max_shard_size``) or of a plain number of bytes."""
    s = str(size).strip()
    if s.isdigit():
        return int(s)
    unit = s[-2:].upper()
    if unit not in _UNITS:
        raise ValueError(f"{size!r}: not a size (a number of bytes or one with KB, MB, GB or TB)")
    return int(float(s[:-2].strip()) * _UNITS[unit])


def _check(ok: Any, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_config(cfg: Any) -> None:
    """Run every cross-field check (the dataclasses' ``__post_init__``) on a composed config:
    OmegaConf validates types and closed choices when it composes, not these."""
    from omegaconf import OmegaConf

    try:
        OmegaConf.to_object(cfg if OmegaConf.is_config(cfg) else OmegaConf.structured(cfg))
    except ValueError as e:
        raise ValueError(str(e).split("\n    full_key")[0]) from None


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
