"""A ranking page for people: the human preferences the reward model learns from (RLHF).

``python -m llm.rank --model DIR --prompts SPEC --out prefs.jsonl`` serves a small local page
(stdlib ``http.server``, no framework, nothing fetched from the network) that shows one prompt
with ``--n`` answers sampled from the model; the person orders them best to worst with the
▲/▼ buttons and submits, or skips the prompt. ``--candidates FILE`` (jsonl of
``{"prompt": ..., "responses": [...]}``) ranks answers generated beforehand instead.

Prompts (``--prompts``): a ``.jsonl`` file whose records have ``prompt`` (a string),
``messages`` (OpenAI style; the conversation without its final assistant message, which must
end with a user turn: earlier turns are the context the model answers in), or ``instruction``
(+ optional ``input``, Alpaca); or ``builtin:python-qa``. A bad record raises
:class:`~llm.data.chat.ChatDataError` naming ``file:line`` and the field.

Output: one JSON object appended per ranking (one write, flushed and fsynced, under a lock and
``flock``), the ranking form :mod:`llm.data.preference` reads for the reward model::

    {"prompt": "<the user prompt>", "responses": ["best", ..., "worst"], "source": "rank-ui",
     "model": "<model dir or candidates file>", "time": "<ISO-8601 UTC>"}

The order is strict (no ties). A ``messages`` prompt with context (a system message or earlier
turns) is written as that conversation (a list of messages ending with the user turn), which the
reader accepts too, so the context is not lost. Prompts already in the output file are skipped on restart;
skipped prompts come back on the next start. Duplicate answers are shown once and empty ones
not at all; with fewer than two distinct answers the prompt is resampled once, then skipped.

JSON API used by the page: ``GET /api/next`` -> ``{"id", "prompt", "context", "answers": [{"id",
"text"}], "saved", "out"}`` or ``{"done": true, ...}``; ``POST /api/rank`` ``{"id", "order":
[answer ids best..worst]}`` -> ``{"saved": count}`` (400 with ``{"error"}`` if ``order`` is not
a permutation of the shown ids); ``POST /api/skip`` ``{"id"}``.
"""

from __future__ import annotations

import argparse
import fcntl
import html
import json
import logging
import os
import secrets
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from llm.data.chat import BUILTIN_PYTHON_QA, ChatDataError, builtin_python_qa, jsonl_records, validate_messages

log = logging.getLogger(__name__)


@dataclass
class Prompt:
    text: str  # the user prompt (shown; also the output's prompt when there is no context)
    messages: list[dict] = field(default_factory=list)  # what the model answers (ends with the user turn)
    responses: list[str] = field(default_factory=list)  # given answers (--candidates)

    @property
    def context(self) -> list[dict]:
        return self.messages[:-1]

    @property
    def record(self) -> Any:
        """The output's ``prompt``: the user message, or the conversation when it has context."""
        return self.messages if self.context else self.text


def _key(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def _string(rec: dict, key: str, where: str) -> str:
    v = rec.get(key)
    if not isinstance(v, str) or not v.strip():
        raise ChatDataError(f"{where}: {key}: expected a non-empty string")
    return v


def _prompt_from_record(rec: Any, where: str) -> Prompt:
    if not isinstance(rec, dict):
        raise ChatDataError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if "prompt" in rec:
        text = _string(rec, "prompt", where)
        return Prompt(text, [{"role": "user", "content": text}])
    if "messages" in rec:
        msgs = rec["messages"]
        if isinstance(msgs, list) and msgs and isinstance(msgs[-1], dict) and msgs[-1].get("role") == "assistant":
            msgs = msgs[:-1]  # the reference answer is not shown: the model's answers are ranked
        if not isinstance(msgs, list) or not msgs:
            raise ChatDataError(f"{where}: messages: expected a non-empty list with a user turn")
        if not any(isinstance(m, dict) and m.get("role") == "user" for m in msgs):
            raise ChatDataError(f"{where}: messages: no user turn (a prompt is a conversation that ends with a user turn)")
        # validate_messages wants a final assistant turn: check the prompt part with a placeholder one
        msgs = validate_messages([*msgs, {"role": "assistant", "content": "-"}], where)[:-1]
        if msgs[-1]["role"] != "user":
            raise ChatDataError(f"{where}: messages[{len(msgs) - 1}].role: the prompt must end with a user turn, not {msgs[-1]['role']!r}")
        return Prompt(msgs[-1]["content"], msgs)
    if "instruction" in rec:
        text = _string(rec, "instruction", where)
        inp = rec.get("input") or ""
        if not isinstance(inp, str):
            raise ChatDataError(f"{where}: input: expected a string")
        text += f"\n\n{inp}" if inp.strip() else ""
        return Prompt(text, [{"role": "user", "content": text}])
    raise ChatDataError(f"{where}: expected a 'prompt', 'messages' or 'instruction' field; keys are {sorted(rec)[:8]}")


def _jsonl(path: str | Path) -> list[tuple[str, Any]]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    out = []
    for where, rec in jsonl_records(p):
        if isinstance(rec, ChatDataError):
            raise rec
        out.append((where, rec))
    if not out:
        raise ChatDataError(f"{p}: no records")
    return out


def read_prompts(spec: str | Path) -> list[Prompt]:
    """The prompts of a ``.jsonl`` file or of ``builtin:python-qa``."""
    if str(spec) == BUILTIN_PYTHON_QA:
        return [_prompt_from_record(r, f"{BUILTIN_PYTHON_QA}#{i}") for i, r in enumerate(builtin_python_qa())]
    return [_prompt_from_record(rec, where) for where, rec in _jsonl(spec)]


def read_candidates(path: str | Path) -> list[Prompt]:
    """``{"prompt": ..., "responses": [...]}`` records: answers generated beforehand."""
    out = []
    for where, rec in _jsonl(path):
        p = _prompt_from_record(rec, where) if isinstance(rec, dict) and "prompt" in rec else None
        if p is None:
            raise ChatDataError(f"{where}: prompt: missing field (candidates: prompt, responses)")
        rs = rec.get("responses")
        if not isinstance(rs, list) or not all(isinstance(r, str) for r in rs):
            raise ChatDataError(f"{where}: responses: expected a list of strings")
        p.responses = list(rs)
        out.append(p)
    return out


class CandidateSource:
    """Answers read from a file; nothing is generated."""

    def __init__(self, path: str | Path):
        self.name = str(path)
        self.prompts = read_candidates(path)

    def sample(self, prompt: Prompt, n: int, attempt: int) -> list[str]:
        return list(prompt.responses)


class ModelSource:
    """Answers sampled from a Hugging Face causal LM, lazily, one prompt at a time."""

    def __init__(
        self,
        model_dir: str | Path,
        prompts: str | Path | list[Prompt],
        max_new_tokens: int = 64,
        temperature: float = 0.9,
        top_p: float = 0.95,
        seed: int | None = 0,
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.data.chat import ensure_chat_template

        self.name = str(model_dir)
        self.prompts = prompts if isinstance(prompts, list) else read_prompts(prompts)
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        added = ensure_chat_template(self.tok)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir)
        if added:
            self.model.resize_token_embeddings(len(self.tok))
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
        self.seed = seed

    def sample(self, prompt: Prompt, n: int, attempt: int) -> list[str]:
        from llm.model.engine import generate_text

        conv: Any = prompt.text if len(prompt.messages) == 1 else prompt.messages
        seed = None if self.seed is None else self.seed + 1_000_003 * attempt
        return generate_text(
            self.model,
            self.tok,
            [conv] * n,
            self.gen["max_new_tokens"],
            do_sample=True,
            temperature=self.gen["temperature"],
            top_p=self.gen["top_p"],
            seed=seed,
            chat=True,
        )


def _distinct(answers: list[str], n: int) -> list[str]:
    seen, out = set(), []
    for a in answers:
        key = a.strip()
        if key and key not in seen:  # the preference reader rejects empty and identical answers
            seen.add(key)
            out.append(a)
    return out[:n]


class Ranker:
    """The state behind the page: the queue of prompts, the one shown, and the output file."""

    def __init__(self, source: Any, out_path: str | Path, n: int = 4):
        if n < 2:
            raise ValueError(f"n must be at least 2 (a ranking needs two answers), got {n}")
        self.source, self.out, self.n = source, Path(out_path), n
        self.lock = threading.Lock()
        self.done: set[str] = set()
        self.saved = 0
        if self.out.exists():
            for where, rec in jsonl_records(self.out):
                if isinstance(rec, ChatDataError):
                    raise ChatDataError(f"{rec} (a ranking file: fix or remove the line)")
                try:
                    self.done.add(_key(rec["prompt"]))
                except (KeyError, TypeError):
                    raise ChatDataError(f"{where}: not a ranking line (fix or remove it)") from None
                self.saved += 1
        self.queue = deque(p for p in source.prompts if _key(p.record) not in self.done)
        self.shown: dict | None = None
        self.next_id = 0

    def _status(self) -> dict:
        return {"saved": self.saved, "out": str(self.out), "remaining": len(self.queue)}

    def next(self) -> dict:
        with self.lock:  # generation happens under the lock: one person, one prompt at a time
            if self.shown is not None:
                return {**self._payload(), **self._status()}
            while self.queue:
                p = self.queue.popleft()
                if _key(p.record) in self.done:
                    continue
                try:
                    answers = _distinct(self.source.sample(p, self.n, 0), self.n)
                    if len(answers) < 2:
                        answers = _distinct(answers + self.source.sample(p, self.n, 1), self.n)
                except Exception:
                    self.queue.appendleft(p)
                    raise
                if len(answers) < 2:
                    log.warning("skipping a prompt with fewer than 2 distinct answers: %.60r", p.text)
                    continue
                self.shown = {
                    "id": self.next_id,
                    "prompt": p.text,
                    "context": p.context,
                    "record": p.record,
                    "answers": [{"id": i, "text": a} for i, a in enumerate(answers)],
                }
                self.next_id += 1
                return {**self._payload(), **self._status()}
            return {"done": True, **self._status()}

    def _payload(self) -> dict:
        return {k: v for k, v in (self.shown or {}).items() if k != "record"}

    def _check_id(self, body: Any) -> str | None:
        if not isinstance(body, dict):
            return "expected a JSON object"
        if type(body.get("id")) is not int:  # not true, not 1.0, not "1"
            return f"id must be an integer, got {body.get('id')!r}"
        if self.shown is None or body["id"] != self.shown["id"]:
            return f"unknown or stale id {body.get('id')!r}: reload the page"
        return None

    def rank(self, body: Any) -> tuple[int, dict]:
        with self.lock:
            err = self._check_id(body)
            if err:
                return 400, {"error": err}
            assert self.shown is not None
            order, k = body.get("order"), len(self.shown["answers"])
            if not (isinstance(order, list) and all(type(i) is int for i in order) and sorted(order) == list(range(k))):
                return 400, {"error": f"order must be a permutation of the answer ids 0..{k - 1} (best first, no ties), got {order!r}"}
            texts = [self.shown["answers"][i]["text"] for i in order]
            line = {
                "prompt": self.shown["record"],
                "responses": texts,
                "source": "rank-ui",
                "model": self.source.name,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
            }
            self._append(json.dumps(line, ensure_ascii=False) + "\n")
            self.done.add(_key(self.shown["record"]))
            self.saved += 1
            self.shown = None
            return 200, {"saved": self.saved}

    def skip(self, body: Any) -> tuple[int, dict]:
        with self.lock:
            err = self._check_id(body)
            if err:
                return 400, {"error": err}
            self.shown = None
            return 200, {"skipped": True, **self._status()}

    def _append(self, text: str) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                if f.tell() > 0:  # a file edited by hand may lack its final newline
                    with open(self.out, "rb") as r:
                        r.seek(-1, os.SEEK_END)
                        if r.read(1) != b"\n":
                            text = "\n" + text
                f.write(text.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Rank answers</title>
<style>
body { font-family: sans-serif; max-width: 52em; margin: 1.5em auto; padding: 0 1em; }
pre { white-space: pre-wrap; font-family: inherit; margin: .3em 0; }
#prompt { background: #eef; padding: .6em; }
#context { color: #555; }
#answers { list-style: none; padding: 0; counter-reset: rank; }
li.answer { border: 1px solid #ccc; margin: .4em 0; padding: .4em; display: flex; gap: .6em; align-items: flex-start; counter-increment: rank; }
li.answer::before { content: counter(rank) "."; font-weight: bold; min-width: 1.5em; }
li.answer pre { flex: 1; }
#error { color: #b00; }
</style></head><body>
<h1>Rank the answers, best first</h1>
<p id="saved">__SAVED__</p>
<div id="context"></div>
<h2>Prompt</h2><pre id="prompt"></pre>
<p id="status">sampling answers...</p>
<ol id="answers"></ol>
<button id="submit" disabled>Submit ranking</button> <button id="skip" disabled>Skip</button>
<p id="error"></p>
<script>
"use strict";
const $ = (s) => document.querySelector(s);
let cur = null;
function saved(n, out) { $("#saved").textContent = n + (n === 1 ? " ranking" : " rankings") + " saved to " + out; }
function busy(on) { $("#submit").disabled = on; $("#skip").disabled = on; }
function refresh() {
  const items = [...document.querySelectorAll("li.answer")];
  items.forEach((li, i) => { li.querySelector(".up").disabled = i === 0; li.querySelector(".down").disabled = i === items.length - 1; });
}
function move(li, up) {
  const list = $("#answers");
  if (up && li.previousElementSibling) list.insertBefore(li, li.previousElementSibling);
  if (!up && li.nextElementSibling) list.insertBefore(li.nextElementSibling, li);
  refresh();
}
function button(cls, label, title, fn) {
  const b = document.createElement("button");
  b.className = cls; b.textContent = label; b.title = title; b.onclick = fn; return b;
}
const TOKEN = __TOKEN__;
async function call(method, url, body) {
  const headers = { "Content-Type": "application/json", "X-Xiulian-Token": TOKEN };
  const r = await fetch(url, { method, headers, body: body && JSON.stringify(body) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}
async function load() {
  busy(true); cur = null;
  $("#answers").replaceChildren(); $("#prompt").textContent = ""; $("#context").replaceChildren();
  $("#status").textContent = "sampling answers...";
  try {
    const d = await call("GET", "/api/next");
    saved(d.saved, d.out);
    if (d.done) {
      $("#status").textContent = "All prompts ranked (or skipped). Nothing left to do: you can close this page.";
      $("#submit").hidden = true; $("#skip").hidden = true;
      return;
    }
    cur = d;
    for (const m of d.context) {
      const p = document.createElement("pre"); p.textContent = m.role + ": " + m.content; $("#context").append(p);
    }
    $("#prompt").textContent = d.prompt;
    for (const a of d.answers) {
      const li = document.createElement("li");
      li.className = "answer"; li.dataset.id = a.id;
      const text = document.createElement("pre"); text.textContent = a.text;
      li.append(button("up", "\\u25B2", "move up", () => move(li, true)), button("down", "\\u25BC", "move down", () => move(li, false)), text);
      $("#answers").append(li);
    }
    refresh();
    $("#status").textContent = d.remaining + " more prompt(s) after this one. Order the answers best first.";
    $("#error").textContent = "";
    busy(false);
  } catch (e) { $("#error").textContent = "Error: " + e.message; }
}
async function send(url, body) {
  busy(true);
  try { const d = await call("POST", url, body); if (d.saved !== undefined) saved(d.saved, d.out || OUT); await load(); }
  catch (e) { $("#error").textContent = "Error: " + e.message; busy(false); }
}
const OUT = __OUT__;
$("#submit").onclick = () => send("/api/rank", { id: cur.id, order: [...document.querySelectorAll("li.answer")].map((li) => Number(li.dataset.id)) });
$("#skip").onclick = () => send("/api/skip", { id: cur.id });
load();
</script></body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server: RankServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: dict) -> None:
        self._send(code, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

    def _refused(self, api: bool) -> bool:
        """Answer and return True when the request may not be served: a foreign Host (DNS
        rebinding), a foreign Origin (another site's page), or an API call without the page's
        session token (a form or a script elsewhere cannot read or send it)."""
        srv = self.server
        if self.headers.get("Host", "") not in srv.allowed_hosts:
            self._json(403, {"error": f"Host {self.headers.get('Host')!r} is not this server (use {srv.url})"})
            return True
        origin = self.headers.get("Origin")
        if origin is not None and origin not in srv.allowed_origins:
            self._json(403, {"error": f"requests from {origin} are not accepted"})
            return True
        if api and not secrets.compare_digest(self.headers.get("X-Xiulian-Token", ""), srv.token):
            self._json(403, {"error": "missing or wrong session token: reload the page"})
            return True
        return False

    def do_GET(self) -> None:
        r = self.server.ranker
        if self._refused(api=self.path.startswith("/api/")):
            return
        if self.path in ("/", "/index.html"):
            page = PAGE.replace("__SAVED__", html.escape(f"{r.saved} ranking{'' if r.saved == 1 else 's'} saved to {r.out}"))
            page = page.replace("__OUT__", json.dumps(str(r.out)).replace("<", "\\u003c"))
            page = page.replace("__TOKEN__", json.dumps(self.server.token))
            self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
        elif self.path == "/api/next":
            try:
                self._json(200, r.next())
            except Exception as e:  # e.g. generation failed: say so on the page
                log.exception("sampling failed")
                self._json(500, {"error": f"sampling failed: {e}"})
        else:
            self._json(404, {"error": f"not found: {self.path}"})

    def do_POST(self) -> None:
        actions = {"/api/rank": self.server.ranker.rank, "/api/skip": self.server.ranker.skip}
        if self._refused(api=True):
            return None
        if self.path not in actions:
            return self._json(404, {"error": f"not found: {self.path}"})
        if self.headers.get_content_type() != "application/json":
            return self._json(415, {"error": f"Content-Type must be application/json, got {self.headers.get('Content-Type')!r}"})
        length = self.headers.get("Content-Length", "")
        if not length.isdigit():  # missing, negative or not a number: never read an unknown amount
            return self._json(411 if not length else 400, {"error": f"Content-Length must be a byte count, got {length!r}"})
        if int(length) > MAX_BODY:
            return self._json(413, {"error": f"body of {int(length):,} bytes: at most {MAX_BODY:,}"})
        try:
            body = json.loads(self.rfile.read(int(length)) or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            return self._json(400, {"error": f"invalid JSON body: {e}"})
        self._json(*actions[self.path](body))


MAX_BODY = 64 * 1024
"""The largest request body the API reads (a ranking is a few hundred bytes)."""


class RankServer(ThreadingHTTPServer):
    """Serves one person's ranking session on a local address. Only requests naming this server
    in ``Host`` (and, when they carry one, in ``Origin``) are served, and the API needs the
    session token that the page carries."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], ranker: Ranker):
        self.ranker = ranker
        self.token = secrets.token_urlsafe(24)
        super().__init__(address, _Handler)
        host, port = self.server_address[:2]
        names = {host, "localhost", "127.0.0.1", "[::1]"} if host in ("127.0.0.1", "localhost", "::1") else {host}
        if host in ("", "0.0.0.0", "::"):  # every interface: this machine's names and addresses
            names = {"localhost", "127.0.0.1", "[::1]", socket.gethostname(), socket.getfqdn()}
        names = {f"[{n}]" if ":" in n and not n.startswith("[") else n for n in names}
        self.allowed_hosts = {f"{n}:{port}" for n in names}
        self.allowed_origins = {f"http://{h}" for h in self.allowed_hosts}
        shown = "localhost" if host in ("", "0.0.0.0", "::") else (f"[{host}]" if ":" in host else host)
        self.url = f"http://{shown}:{port}/"


def make_server(source: Any, out_path: str | Path, n: int = 4, host: str = "127.0.0.1", port: int = 0, **gen_kwargs: Any) -> RankServer:
    """A server (not yet serving: call ``serve_forever``) for ``source``: a :class:`CandidateSource`
    or :class:`ModelSource`, a candidates ``.jsonl`` file, or a model directory (then
    ``prompts=SPEC`` and the sampling options go in ``gen_kwargs``). ``port=0`` picks a free port:
    see ``server.server_address``."""
    if isinstance(source, (str, Path)):
        source = ModelSource(source, **gen_kwargs) if Path(source).is_dir() else CandidateSource(source)
    elif gen_kwargs:
        raise TypeError(f"sampling options {sorted(gen_kwargs)} go with a model directory, not a {type(source).__name__}")
    return RankServer((host, port), Ranker(source, out_path, n))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m llm.rank", description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="Hugging Face causal-LM directory to sample answers from")
    src.add_argument("--candidates", help='jsonl of {"prompt", "responses"}: answers generated beforehand')
    ap.add_argument("--prompts", help=f".jsonl of prompt/messages/instruction records, or {BUILTIN_PYTHON_QA} (with --model)")
    ap.add_argument("--out", required=True, help="preference jsonl to append to (resumable)")
    ap.add_argument("--n", type=int, default=4, help="answers per prompt (at most, with --candidates)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.9)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.model and not a.prompts:
        ap.error("--model needs --prompts")
    try:
        source: Any = (
            ModelSource(a.model, a.prompts, a.max_new_tokens, a.temperature, a.top_p, a.seed) if a.model else CandidateSource(a.candidates)
        )
        server = make_server(source, a.out, a.n, a.host, a.port)
    except (ChatDataError, OSError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    r = server.ranker
    print(f"Ranking UI: {server.url}  (writing to {a.out}; served to this address only)", flush=True)
    print(f"{len(r.queue)} prompts to rank, {r.saved} rankings already in {a.out}; Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"\nstopped: {r.saved} rankings in {a.out}", flush=True)
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
