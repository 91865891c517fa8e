"""Multi-turn episodes with tools for stage=grpo: environments, tools, and the rollout of an
episode into one training sequence with a loss mask.

An **episode** starts from a task's prompt (with the environment's instructions in front of the
first user turn). Each turn the model writes an assistant reply (generated through the stage's
engine, :meth:`llm.stages.rollout.RolloutStage.generate`); the environment reads it
(:meth:`Environment.step`) and either returns a tool result, which becomes a new turn of the
conversation, or ends the episode. An episode ends when a reply holds a final answer (a
``\\boxed{}`` or an ``Answer:`` line, :func:`llm.rl.tasks.extract_answer`) or calls no tool,
when a reply is cut at ``max_new_tokens`` before its end-of-turn token, at ``max_turns``
assistant turns (a tool call in the last one is not run), or when the next turn would not fit in
the model's context.

**Tool calls** are written in the reply as ``<tool>NAME: INPUT</tool>``, e.g.
``<tool>calculator: 1234 * 5678</tool>`` or ``<tool>python: print(sum(range(10)))</tool>``
(INPUT may span lines). Every call of a reply is run (at most :data:`MAX_CALLS_PER_TURN`), and
their outputs, one a line, form one tool turn, cut to :data:`MAX_TOOL_OUTPUT_CHARS` characters.
Tools: ``calculator`` (:func:`calculator`: arithmetic read with :mod:`ast`, never evaluated as
Python) and ``python`` (:func:`python_tool`: runs in the code sandbox, ``llm/rl/sandbox.py``).

**The tool turn** is rendered by the chat template with the role ``tool`` when the template
renders that role as its own turn (ChatML, Llama 3 headers, the framework default); otherwise
(a template that raises on it or drops it) as a user turn starting with ``Tool output:``. The
tokens the environment inserts after a reply are the template's text after the reply's
end-of-turn marker: the rest of the template's turn separator, the tool turn, and the next
assistant generation prompt (:meth:`TurnRenderer.inserted_ids`).

**The training sequence** is the prompt followed by every turn, as one :class:`EpisodeRollout`
(a :class:`llm.rl.experience.Rollout`): ``responses`` hold all tokens after the prompt,
``response_mask`` is 1 on the model's own generated tokens only (so the loss, the log-probs, the
KL and the reference count only those) and 0 on tool output and on the template tokens the
environment inserted, while ``attention_mask`` covers every token of the episode (the model
reads the tool output). ``texts`` are each episode's last reply (what the verifier reads).
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

import torch

from llm.data.preference import pad_batch
from llm.rl.experience import Rollout
from llm.rl.tasks import Task, extract_answer

log = logging.getLogger(__name__)

TOOL_CALL = re.compile(r"<tool>\s*([A-Za-z_][\w-]*)\s*:(.*?)</tool>", re.DOTALL)
"""``<tool>NAME: INPUT</tool>``: group 1 the tool's name, group 2 its input."""
MAX_CALLS_PER_TURN = 4
MAX_TOOL_OUTPUT_CHARS = 500
MAX_EXPRESSION_CHARS = 200
MAX_RESULT_BITS = 4000  # a calculator result beyond about 10**1200 is refused, not computed
TOOL_USER_PREFIX = "Tool output:\n"


class ToolError(Exception):
    """A tool refused its input or failed; the message goes back to the model as the output."""


# ------------------------------------------------------------------------------------- tools
def _bounded(x: Fraction) -> Fraction:
    if max(x.numerator.bit_length(), x.denominator.bit_length()) > MAX_RESULT_BITS:
        raise ToolError("number too large")
    return x


def _power(a: Fraction, b: Fraction) -> Fraction:
    if b.denominator != 1:
        raise ToolError("only whole-number powers")
    e = int(b)
    if abs(e) > 1 and max(a.numerator.bit_length(), a.denominator.bit_length()) * abs(e) > MAX_RESULT_BITS:
        raise ToolError("number too large")
    if a == 0 and e < 0:
        raise ToolError("division by zero")
    return a**e


def _divide(a: Fraction, b: Fraction, op: type) -> Fraction:
    if b == 0:
        raise ToolError("division by zero")
    if op is ast.Div:
        return a / b
    if op is ast.FloorDiv:
        return Fraction(a // b)
    return a % b


_CALC_OPS: dict[type, Callable[[Fraction, Fraction], Fraction]] = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: _divide(a, b, ast.Div),
    ast.FloorDiv: lambda a, b: _divide(a, b, ast.FloorDiv),
    ast.Mod: lambda a, b: _divide(a, b, ast.Mod),
    ast.Pow: _power,
}


def format_number(x: Fraction) -> str:
    """An integer as itself; any other number as a decimal of 12 significant digits, with the
    exact fraction after it when the decimal is not exact (``1/3`` -> ``0.333333333333 (1/3)``)."""
    if x.denominator == 1:
        return str(x.numerator)
    with localcontext() as ctx:
        ctx.prec = 12
        d = Decimal(x.numerator) / Decimal(x.denominator)
    s = format(d.normalize(), "f") if abs(d.adjusted()) < 12 else str(d.normalize())
    return s if Fraction(d) == x else f"{s} ({x.numerator}/{x.denominator})"


def calculate(expr: str) -> Fraction:
    """The exact value of an arithmetic expression: integer and decimal literals, + - * / // %
    and ** (``^`` reads as a power; whole-number exponents), unary signs and parentheses. The
    text is parsed with :mod:`ast` and the tree walked; nothing is run, and anything else (names,
    calls, attributes, subscripts, strings...) raises :class:`ToolError`."""
    s = expr.strip().replace("^", "**").replace("×", "*").replace("÷", "/").replace("−", "-").rstrip("=").strip()
    if not s:
        raise ToolError("empty expression")
    if len(s) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(s, mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {s!r}") from None

    def walk(node: ast.AST) -> Fraction:
        if isinstance(node, ast.BinOp) and type(node.op) in _CALC_OPS:
            return _bounded(_CALC_OPS[type(node.op)](walk(node.left), walk(node.right)))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.UAdd, ast.USub)):
            v = walk(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return _bounded(Fraction(str(node.value)) if type(node.value) is float else Fraction(node.value))
        raise ToolError(f"not allowed in arithmetic: {type(node).__name__}")

    return walk(tree.body)


def calculator(expr: str) -> str:
    """The ``calculator`` tool: :func:`calculate`'s value, written by :func:`format_number`."""
    return format_number(calculate(expr))


def python_tool(code: str) -> str:
    """The ``python`` tool: ``code`` run by the code sandbox (:func:`llm.rl.sandbox.run_python`: a
    separate process with a 5 s wall-clock limit, 512 MiB, no network, a throw-away directory);
    its standard output, then its error output, then ``[status: reason]`` when it did not end
    normally (``timeout``, ``memory``, ``forbidden``, ``error``, ...)."""
    from llm.rl.sandbox import SandboxLimits, run_python

    r = run_python(code, limits=SandboxLimits(timeout_s=5.0))
    out = r.stdout + ("\n" if r.stdout and r.stderr else "") + r.stderr
    if r.status != "ok":
        out = f"{out}\n[{r.status}{': ' + r.error if r.error else ''}]".strip()
    return out or "(no output)"


TOOLS: dict[str, Callable[[str], str]] = {"calculator": calculator, "python": python_tool}


def parse_tool_calls(reply: str) -> list[tuple[str, str]]:
    """The ``(name, input)`` of each ``<tool>NAME: INPUT</tool>`` in a reply, in order."""
    return [(m.group(1), m.group(2).strip()) for m in TOOL_CALL.finditer(reply)]


# ------------------------------------------------------------------------------ environments
@dataclass
class Step:
    """An environment's answer to one assistant reply: a tool turn (``tool_output``; the
    episode goes on) or the end of the episode (``tool_output`` None, ``answer`` the final
    answer found in the reply, or None)."""

    tool_output: str | None = None
    tool_calls: int = 0
    answer: str | None = None

    @property
    def done(self) -> bool:
        return self.tool_output is None


class Environment:
    """Tools behind the tool-call format. A reply with a final answer ends the episode (the
    task's verifier scores it, in the stage's reward); a reply with tool calls gets their
    outputs; a reply with neither ends the episode without an answer. Subclasses set
    :attr:`name`, :attr:`tools` and :attr:`instructions`, or override :meth:`step`."""

    name = ""
    tools: dict[str, Callable[[str], str]] = {}
    instructions = ""
    """Put before the first user turn's text: how to call the tools and how to answer."""

    def start(self, messages: list[dict]) -> list[dict]:
        """The episode's opening conversation: ``messages`` with :attr:`instructions` in front
        of the first user turn."""
        out = [dict(m) for m in messages]
        for m in out:
            if m["role"] == "user" and self.instructions:
                m["content"] = f"{self.instructions}\n\n{m['content']}"
                break
        return out

    def run_tool(self, name: str, arg: str) -> str:
        """One call's output; a refusal or failure is returned as ``error: ...``."""
        if name not in self.tools:
            return f"error: unknown tool {name!r} (tools: {', '.join(self.tools)})"
        try:
            return self.tools[name](arg)
        except ToolError as e:
            return f"error: {e}"

    def step(self, messages: list[dict], reply: str, task: Task | None = None) -> Step:
        """The answer to the assistant's latest ``reply`` (already the last of ``messages``)."""
        answer = extract_answer(reply)
        calls = parse_tool_calls(reply)
        if answer is not None or not calls:
            return Step(answer=answer)
        outs = [self.run_tool(n, a) for n, a in calls[:MAX_CALLS_PER_TURN]]
        text = "\n".join(outs)
        if len(text) > MAX_TOOL_OUTPUT_CHARS:
            text = text[:MAX_TOOL_OUTPUT_CHARS] + " ...(cut)"
        return Step(tool_output=text, tool_calls=len(outs))


class CalculatorEnv(Environment):
    """Arithmetic with a calculator (pair it with ``data.tasks=builtin:arithmetic`` and large
    operands, e.g. ``'+data.tasks_params={digits: 4, ops: ["*"]}'``)."""

    name = "calculator"
    tools = {"calculator": calculator}
    instructions = (
        "You have a calculator. To use it, write <tool>calculator: EXPRESSION</tool> (e.g. <tool>calculator: 12 * 34</tool>) "
        "and end your turn; its result comes back in the next turn. When you know the answer, put it in \\boxed{}."
    )


class PythonEnv(Environment):
    """A Python interpreter in the code sandbox, and the calculator."""

    name = "python"
    tools = {"python": python_tool, "calculator": calculator}
    instructions = (
        "You can run Python: write <tool>python: CODE</tool> and end your turn; what the code prints comes back in the next "
        "turn. You also have <tool>calculator: EXPRESSION</tool>. When you know the answer, put it in \\boxed{}."
    )


ENVIRONMENTS: dict[str, type[Environment]] = {"calculator": CalculatorEnv, "python": PythonEnv}


def make_env(name: str) -> Environment:
    if name not in ENVIRONMENTS:
        raise ValueError(f"stage.grpo.env={name!r}: not an environment (one of {', '.join(ENVIRONMENTS)})")
    return ENVIRONMENTS[name]()


# ---------------------------------------------------------------------------- rendering turns
class TurnRenderer:
    """The tokens an environment inserts after an assistant reply, rendered by the chat
    template: ``role="tool"`` renders tool output as a ``tool`` turn when the template can
    (:meth:`renders_tool_role`), else as a user turn starting with :data:`TOOL_USER_PREFIX`."""

    def __init__(self, tokenizer: Any, role: str = "tool") -> None:
        if role not in ("tool", "user"):
            raise ValueError(f"tool turns are rendered as 'tool' or 'user' turns, not {role!r}")
        self.tokenizer = tokenizer
        self.role = role
        if role == "tool" and not self.renders_tool_role(tokenizer):
            log.warning("the chat template does not render a 'tool' turn: tool output goes in a user turn (%r...)", TOOL_USER_PREFIX)
            self.role = "user"
        from llm.data.chat import _special_ids

        ids = _special_ids(tokenizer)
        self._specials = [t for t in tokenizer.convert_ids_to_tokens(sorted(ids)) if t]

    @staticmethod
    def renders_tool_role(tokenizer: Any) -> bool:
        """Whether the template renders a ``tool`` message as a turn of its own, its content
        kept, and a conversation's prefix as a prefix of the whole."""
        from jinja2 import TemplateError

        from llm.data.chat import render_text

        conv = [{"role": "user", "content": "PROBE_Q"}, {"role": "assistant", "content": "PROBE_A"}]
        try:
            before = render_text(tokenizer, conv)
            full = render_text(tokenizer, [*conv, {"role": "tool", "content": "PROBE_TOOL"}], add_generation_prompt=True)
        except (TemplateError, ValueError, KeyError, TypeError):
            return False
        return "PROBE_TOOL" in full and full.startswith(before.rstrip())

    def tool_message(self, output: str) -> dict[str, str]:
        """The tool turn of ``output``; special tokens' text (an end-of-turn marker...) is taken
        out, so that tool output cannot end or open a turn."""
        for t in self._specials:
            output = output.replace(t, "")
        output = output.strip() or "(no output)"
        if self.role == "tool":
            return {"role": "tool", "content": output}
        return {"role": "user", "content": TOOL_USER_PREFIX + output}

    def inserted_ids(self, messages: list[dict], tool: dict[str, str]) -> list[int]:
        """Token ids after the last assistant reply of ``messages``: the template's text after
        the reply's end-of-turn marker, the ``tool`` turn and the next generation prompt."""
        from llm.data.chat import render_text

        upto = render_text(self.tokenizer, messages)
        end = len(upto.rstrip())
        full = render_text(self.tokenizer, [*messages, tool], add_generation_prompt=True)
        if not full.startswith(upto[:end]):
            raise ValueError(
                "the chat template does not render a conversation's prefix as a prefix of the whole (needed to append tool "
                "turns); use the framework default template (data.chat_template=default)"
            )
        return self.tokenizer(full[end:], add_special_tokens=False).input_ids


def encode_prompts(tokenizer: Any, conversations: Sequence[list[dict]]) -> list[list[int]]:
    """Each conversation rendered with the template and its generation prompt, BOS first when the
    tokenizer uses one."""
    from llm.data.chat import render_text, with_bos

    return [
        with_bos(tokenizer, tokenizer(render_text(tokenizer, c, add_generation_prompt=True), add_special_tokens=False).input_ids)
        for c in conversations
    ]


# ------------------------------------------------------------------------------------ episodes
@dataclass(kw_only=True)  # after Rollout's defaulted fields
class EpisodeRollout(Rollout):
    """A :class:`Rollout` of multi-turn episodes: ``responses`` [B, R] hold every token after the
    prompt (replies, tool turns, inserted template tokens), ``response_mask`` is 1 on the model's
    own generated tokens only, ``token_mask`` on every token of the episode."""

    token_mask: torch.Tensor  # [B, R] long, 1 on every episode token, 0 on padding
    turns: torch.Tensor  # [B] long, assistant turns
    tool_calls: torch.Tensor  # [B] long, tool calls run
    transcripts: list[list[dict]]  # B conversations after the prompt: assistant and tool turns

    @property
    def attention_mask(self) -> torch.Tensor:  # [B, P + R]: the model reads the tool turns
        return torch.cat([self.prompt_mask, self.token_mask], 1)

    def transcript_texts(self) -> list[str]:
        """Each episode's turns as text (``[role] content`` blocks), for logs and samples."""
        return ["\n".join(f"[{m['role']}] {m['content']}" for m in t) for t in self.transcripts]


def _first_stop(tokens: list[int], stop_ids: Sequence[int]) -> int | None:
    for k, t in enumerate(tokens):
        if t in stop_ids:
            return k
    return None


def run_episodes(
    env: Environment,
    renderer: TurnRenderer,
    generate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    prompts: Sequence[list[dict]],
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    max_turns: int,
    max_new_tokens: int,
    max_len: int | None = None,
    tasks: Sequence[Task] | None = None,
    device: Any = None,
    any_active: Callable[[bool], bool] | None = None,
) -> EpisodeRollout:
    """Roll out one episode per prompt (opened by :meth:`Environment.start`). Each turn the
    unfinished episodes generate together: ``generate(ids [n, T] left-padded, attention mask)``
    gives up to ``max_new_tokens`` new tokens per row, cut after the first of ``stop_ids``;
    the environment's tool turn is tokenised (:meth:`TurnRenderer.inserted_ids`) and appended.
    ``max_len``: an episode whose next turn would not fit in that many tokens ends.
    ``any_active(local)``: under FSDP every rank must generate as often as the others: it tells
    whether any rank still has an unfinished episode (a rank with none generates a dummy row)."""
    tok = renderer.tokenizer
    B = len(prompts)
    convs = [env.start(p) for p in prompts]
    ctx = encode_prompts(tok, convs)
    resp: list[list[int]] = [[] for _ in range(B)]
    mask: list[list[int]] = [[] for _ in range(B)]
    moves: list[list[dict]] = [[] for _ in range(B)]
    turns, calls, ended, last = [0] * B, [0] * B, [False] * B, [""] * B
    active = list(range(B))
    while True:
        go = any_active(bool(active)) if any_active is not None else bool(active)
        if not go:
            break
        rows = active or [0]
        seqs = [ctx[i] + resp[i] for i in rows]
        ids, am = pad_batch(seqs, pad_id, max(len(s) for s in seqs), "left")
        out = generate(ids.to(device), am.to(device)).tolist()
        if not active:
            continue  # a dummy turn: other ranks still generate
        still = []
        for j, i in enumerate(active):
            new = out[j][:max_new_tokens]
            stop = _first_stop(new, stop_ids)
            new = new if stop is None else new[: stop + 1]
            resp[i] += new
            mask[i] += [1] * len(new)
            turns[i] += 1
            text = tok.decode(new, skip_special_tokens=True)
            last[i], ended[i] = text, stop is not None
            moves[i].append({"role": "assistant", "content": text})
            if stop is None or turns[i] >= max_turns:
                continue  # cut at max_new_tokens, or the turn limit
            step = env.step(convs[i] + moves[i], text, tasks[i] if tasks is not None else None)
            if step.done:
                continue
            tool = renderer.tool_message(step.tool_output or "")
            inserted = renderer.inserted_ids(convs[i] + moves[i], tool)
            calls[i] += step.tool_calls
            moves[i].append(tool)
            resp[i] += inserted
            mask[i] += [0] * len(inserted)
            if max_len is not None and len(ctx[i]) + len(resp[i]) + max_new_tokens > max_len:
                continue  # the next turn would not fit
            still.append(i)
        active = still

    prompt_ids, prompt_mask = pad_batch(ctx, pad_id, max(len(c) for c in ctx), "left")
    R = max(1, max(len(r) for r in resp))
    responses, token_mask = pad_batch(resp, pad_id, R, "right")
    response_mask = torch.zeros_like(token_mask)
    for i, m in enumerate(mask):
        response_mask[i, : len(m)] = torch.tensor(m, dtype=torch.long)
    return EpisodeRollout(
        prompt_ids=prompt_ids.to(device),
        prompt_mask=prompt_mask.to(device),
        responses=responses.to(device),
        response_mask=response_mask.to(device),
        ended=torch.tensor(ended, device=device),
        texts=last,
        prompts=convs,
        token_mask=token_mask.to(device),
        turns=torch.tensor(turns, device=device),
        tool_calls=torch.tensor(calls, device=device),
        transcripts=moves,
    )


class EpisodeRunner:
    """What stage=grpo holds for ``stage.grpo.env``: the environment, the renderer of tool turns
    and ``max_turns``; :meth:`rollout` is the multi-turn counterpart of ``RolloutStage.rollout``."""

    def __init__(self, env: Environment, tokenizer: Any, max_turns: int) -> None:
        self.env, self.max_turns = env, max_turns
        self.renderer = TurnRenderer(tokenizer)

    @classmethod
    def from_config(cls, grpo_cfg: Any, tokenizer: Any) -> EpisodeRunner:
        return cls(make_env(str(grpo_cfg.env)), tokenizer, int(grpo_cfg.max_turns))

    def rollout(
        self, stage: Any, prompts: Sequence[list[dict]], tasks: Sequence[Task] | None = None, greedy: bool = False
    ) -> EpisodeRollout:
        """Episodes of ``stage``'s policy (a ``RolloutStage``) on ``prompts``, generated through
        its :meth:`generate`."""
        any_active = None
        if stage.generate_in_step:  # FSDP, ZeRO-3: gathering weights is a collective, every rank generates in step

            def any_active(local: bool) -> bool:
                flag = torch.tensor(float(local), device=stage.device)
                return bool(stage.trainer.strategy.reduce(flag, reduce_op="sum") > 0)

        cfg = stage.rollout_cfg
        return run_episodes(
            self.env,
            self.renderer,
            lambda ids, am: stage.generate(ids, am, greedy=greedy),
            prompts,
            stop_ids=stage.stop_ids,
            pad_id=stage.pad_id,
            max_turns=self.max_turns,
            max_new_tokens=cfg.max_new_tokens,
            max_len=getattr(stage.model.config, "max_position_embeddings", None),
            tasks=tasks,
            device=stage.device,
            any_active=any_active,
        )

    @staticmethod
    def metrics(ro: EpisodeRollout) -> dict[str, torch.Tensor]:
        """Per-episode means: assistant ``turns``, ``tool_calls`` run, ``tool_tokens`` (tokens
        out of the loss: tool output and inserted template tokens)."""
        return {
            "turns": ro.turns.float().mean(),
            "tool_calls": ro.tool_calls.float().mean(),
            "tool_tokens": (ro.token_mask - ro.response_mask).sum(1).float().mean(),
        }
