"""Self-instruct teachers: the ``Teacher`` protocol, an OpenAI-compatible HTTP endpoint
(``HTTPTeacher``) and a local chat model (``LocalTeacher``), and ``make_teacher`` to pick one."""

from __future__ import annotations

import http.client
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from typing_extensions import Self

log = logging.getLogger("llm.data.self_instruct")

Message = dict[str, str]  # {"role": "user" | "assistant" | "system", "content": str}


class Completion(str):
    """A teacher reply: a ``str`` that also says whether the length limit cut it off."""

    truncated: bool

    def __new__(cls, text: str, truncated: bool = False) -> Self:
        obj = super().__new__(cls, text)
        obj.truncated = truncated
        return obj


def is_truncated(text: str) -> bool:
    return bool(getattr(text, "truncated", False))


@runtime_checkable
class Teacher(Protocol):
    """Anything that answers chat conversations, one reply per conversation, in order.

    Replies may be ``Completion`` objects; a plain ``str`` counts as not truncated.
    """

    name: str

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]: ...


class TeacherError(RuntimeError):
    """The teacher cannot be used (bad endpoint, authentication, model without a chat template)."""


def chat_completions_url(url: str) -> str:
    """The chat-completions URL for a base URL (``http://host:port/v1``), a bare host
    (``http://host:port``) or the full ``.../chat/completions`` URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{url!r} is not an http(s) URL")
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path = (path or "/v1") + "/chat/completions"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


class HTTPTeacher:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint, called with ``urllib``.

    Requests run ``concurrency`` at a time; replies come back in request order. 429, 5xx,
    connection errors and timeouts are retried ``retries`` times with exponential backoff
    (``backoff * 2**attempt`` seconds up to 60, or the server's ``Retry-After`` up to 60 s);
    any other HTTP status raises ``TeacherError`` naming the URL and the status.
    """

    def __init__(
        self,
        url: str,
        model: str = "default",
        *,
        temperature: float = 0.7,
        max_tokens: int = 512,
        api_key: str | None = None,
        timeout: float = 120.0,
        retries: int = 5,
        backoff: float = 1.0,
        concurrency: int = 4,
    ) -> None:
        self.url = chat_completions_url(url)
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.concurrency = max(1, concurrency)
        self.name = f"{self.url} (model {model})"
        self.requests = 0  # HTTP attempts made, retries included
        self._lock = threading.Lock()

    def payload(self, messages: Sequence[Message]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "n": 1,
        }

    def _mask(self, text: str) -> str:
        """``text`` with the API key replaced: a server that echoes it back must not put it on
        the console or in a log."""
        return text.replace(self.api_key, "***") if self.api_key else text

    def _post(self, body: bytes) -> dict[str, Any]:
        try:
            return self._post_once_with_retries(body)
        except TeacherError as e:
            raise TeacherError(self._mask(str(e))) from None

    def _post_once_with_retries(self, body: bytes) -> dict[str, Any]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            with self._lock:
                self.requests += 1
            delay = min(60.0, self.backoff * 2**attempt)
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with _OPENER.open(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                try:
                    return json.loads(raw)
                except json.JSONDecodeError as e:
                    raise TeacherError(f"{self.url}: the reply is not JSON ({e}): {raw[:300]!r}") from None
            except urllib.error.HTTPError as e:
                detail = _error_body(e)
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code} {e.reason}{detail}"
                    retry_after = _retry_after(e)
                    if retry_after is not None:
                        delay = retry_after
                else:
                    hint = ""
                    if e.code in (401, 403) and self.api_key:
                        hint = " (the API key from --api-key-env was refused)"
                    elif e.code in (401, 403):
                        hint = " (no API key was sent: set --api-key-env to the name of the environment variable holding it)"
                    elif e.code == 404:
                        hint = " (check the URL, and --model-name against the server's /v1/models)"
                    raise TeacherError(f"{self.url}: HTTP {e.code} {e.reason}{detail}{hint}") from None
            except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as e:
                reason = getattr(e, "reason", e)
                last = f"connection error: {reason}"
            if attempt < self.retries:
                log.warning("%s: %s; retry %d/%d in %.1fs", self.url, self._mask(last), attempt + 1, self.retries, delay)
                time.sleep(delay)
        raise TeacherError(f"{self.url}: giving up after {self.retries + 1} attempts; last: {last}")

    def complete_one(self, messages: Sequence[Message]) -> Completion:
        data = self._post(json.dumps(self.payload(messages)).encode("utf-8"))
        try:
            choice = data["choices"][0]
            content = choice["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise TeacherError(self._mask(f"{self.url}: no choices[0].message.content in the reply: {json.dumps(data)[:300]}")) from None
        return Completion(content or "", truncated=choice.get("finish_reason") == "length")

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        if len(conversations) <= 1 or self.concurrency == 1:
            return [self.complete_one(c) for c in conversations]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(conversations))) as pool:
            return list(pool.map(self.complete_one, conversations))


class _SameOriginCredentials(urllib.request.HTTPRedirectHandler):
    """Follows redirects as urllib does, but never carries the ``Authorization`` header to
    another origin (scheme, host or port): a redirect must not hand the API key to a third party."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            for h in [k for k in new.headers if k.lower() == "authorization"]:
                del new.headers[h]
            new.unredirected_hdrs = {k: v for k, v in new.unredirected_hdrs.items() if k.lower() != "authorization"}
            log.warning("redirected from %s to another origin, %s: the API key is not sent there", req.full_url, newurl)
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    p = urllib.parse.urlsplit(url)
    return p.scheme, (p.hostname or "").lower(), p.port or {"http": 80, "https": 443}.get(p.scheme)


_OPENER = urllib.request.build_opener(_SameOriginCredentials)


def _error_body(e: urllib.error.HTTPError) -> str:
    try:
        text = e.read().decode("utf-8", "replace").strip()
    except Exception:  # noqa: BLE001 - the body is only a detail of the message
        return ""
    return f": {text[:300]}" if text else ""


def _retry_after(e: urllib.error.HTTPError) -> float | None:
    value = e.headers.get("Retry-After") if e.headers else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds <= 60 else None


# token strings that end an assistant turn in common chat templates


class LocalTeacher:
    """A local chat model: batched ``generate`` with left padding, KV cache and sampling.

    ``path`` is a Hugging Face model directory or a ``.gguf`` file. The tokenizer must carry a
    chat template. Generation runs through the one engine (``llm.model.engine``), which decides
    where it stops: the template's end-of-turn token, eos, and the model's declared stop ids.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        temperature: float = 0.7,
        top_p: float = 0.9,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        device: str | None = None,
        num_threads: int | None = None,
    ) -> None:
        import torch

        if num_threads:
            torch.set_num_threads(num_threads)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llm.model.build import resolve_pretrained

        model_dir = resolve_pretrained(path)
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        if not getattr(tok, "chat_template", None):
            raise TeacherError(
                f"{path}: the tokenizer has no chat_template; the teacher must be a chat "
                "(instruction-tuned) model whose tokenizer carries a chat template"
            )
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
        if tok.pad_token_id is None:
            raise TeacherError(f"{path}: the tokenizer has no eos, pad or unk token to pad a batch with")
        self.tokenizer = tok
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).to(self.device).eval()
        from llm.model.engine import Engine

        self.engine = Engine(self.model, tok, chat=True)
        self.eos_ids = list(self.engine.eos)
        if not self.eos_ids:
            raise TeacherError(f"{path}: no eos or end-of-turn token to stop generation at")
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.batch_size = max(1, batch_size)
        self.name = f"{path}"
        self.model_dir = model_dir
        self.generated_tokens = 0
        torch.manual_seed(seed)

    def complete(self, conversations: Sequence[Sequence[Message]]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(conversations), self.batch_size):
            out.extend(self._complete_batch(conversations[i : i + self.batch_size]))
        return out

    def _complete_batch(self, conversations: Sequence[Sequence[Message]]) -> list[Completion]:
        import torch

        from llm.data.chat import render_text
        from llm.model.engine import Sampling

        tok = self.tokenizer
        texts = [render_text(tok, list(c), add_generation_prompt=True) for c in conversations]  # BOS first when used
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = Sampling(self.max_new_tokens, do_sample=self.temperature > 0, temperature=self.temperature, top_p=self.top_p)
        new = self.engine.generate(enc["input_ids"], enc["attention_mask"], sampling)
        eos = torch.tensor(self.eos_ids, device=new.device)
        results = []
        for row in new:
            hit = torch.isin(row, eos).nonzero()
            end = int(hit[0, 0]) if len(hit) else row.shape[0]
            self.generated_tokens += end
            text = tok.decode(row[:end], skip_special_tokens=True)
            results.append(Completion(text, truncated=not len(hit)))
        return results


def make_teacher(
    spec: str,
    *,
    model_name: str | None = None,
    api_key_env: str | None = None,
    temperature: float = 0.7,
    top_p: float = 0.9,
    max_new_tokens: int = 512,
    batch: int = 8,
    seed: int = 0,
    timeout: float = 120.0,
    retries: int = 5,
    num_threads: int | None = None,
) -> Teacher:
    """An ``HTTPTeacher`` for an http(s) URL, else a ``LocalTeacher`` for a directory / .gguf."""
    if spec.startswith(("http://", "https://")):
        api_key = None
        if api_key_env:
            api_key = os.environ.get(api_key_env)
            if not api_key:
                raise TeacherError(f"--api-key-env {api_key_env}: the environment variable is unset or empty")
        return HTTPTeacher(
            spec,
            model_name or "default",
            temperature=temperature,
            max_tokens=max_new_tokens,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            concurrency=batch,
        )
    return LocalTeacher(
        spec,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch,
        seed=seed,
        num_threads=num_threads,
    )
