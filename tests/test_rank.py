"""The ranking page (llm/rank.py) in a real headless browser: Debian's chromium driven by
Selenium through Debian's chromedriver (same build as the browser, nothing downloaded), with
answers given beforehand and sampled from a real (tiny, briefly pretrained) model; and the JSON
API and prompt reading without a browser. Browser tests skip when chromium, chromedriver or
selenium is missing (launch/fixtures.sh installs them as root)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import threading
import urllib.error
import urllib.request
from datetime import datetime, timezone

import pytest

from llm.data.chat import ChatDataError
from llm.rank import make_server, read_candidates, read_prompts

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
XSS = "<script>alert(1)</script>"


@contextlib.contextmanager
def serving(server):
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}/"
    finally:
        server.shutdown()
        server.server_close()
        t.join(5)


@pytest.fixture(scope="module")
def browser():
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} missing: install Debian's chromium and chromium-driver (bash launch/fixtures.sh as root)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e .[dev])")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-extensions",
        "--window-size=1200,900",
    ):
        opts.add_argument(arg)
    try:  # a driver path in Service: Selenium Manager (which would go to the network) is not used
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    except Exception as e:  # a browser that cannot start here is an environment problem, not a failure
        pytest.skip(f"headless chromium did not start: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def _wait(driver, cond, timeout=30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _text(driver, css):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css).text


def _answers(driver, prompt=None, timeout=30):
    """The answer items, once the page shows them (for ``prompt`` if given)."""
    from selenium.webdriver.common.by import By

    def ready(d):
        items = d.find_elements(By.CSS_SELECTOR, "li.answer")
        if (
            len(items) >= 2
            and (prompt is None or _text(d, "#prompt") == prompt)
            and not d.find_element(By.ID, "submit").get_attribute("disabled")
        ):
            return items
        return False

    return _wait(driver, ready, timeout)


def _click(item, cls):
    from selenium.webdriver.common.by import By

    item.find_element(By.CSS_SELECTOR, f"button.{cls}").click()


def _shown(driver):
    """(data-id, answer text) of the items, top to bottom."""
    from selenium.webdriver.common.by import By

    return [
        (li.get_attribute("data-id"), li.find_element(By.TAG_NAME, "pre").text) for li in driver.find_elements(By.CSS_SELECTOR, "li.answer")
    ]


def _lines(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _check_fields(rec, model):
    assert set(rec) == {"prompt", "responses", "source", "model", "time"}
    assert rec["source"] == "rank-ui" and rec["model"] == model
    assert datetime.fromisoformat(rec["time"].replace("Z", "+00:00")).tzinfo == timezone.utc


@pytest.mark.tier("system")
def test_rank_page_with_candidates(tmp_path, browser):
    from selenium.common.exceptions import NoAlertPresentException

    cands, out = tmp_path / "cands.jsonl", tmp_path / "prefs.jsonl"
    recs = [
        {"prompt": "What is 2 + 2?", "responses": ["4", XSS, "four"]},
        {"prompt": "Name a colour.", "responses": ["red", "blue", "green"]},
    ]
    cands.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with serving(make_server(str(cands), out, n=4)) as url:
        browser.get(url)
        items = _answers(browser, "What is 2 + 2?")
        assert _shown(browser) == [("0", "4"), ("1", XSS), ("2", "four")]  # the script is text, escaped
        assert not browser.find_elements("css selector", "li.answer script")
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.accept()
        assert "0 rankings saved to" in _text(browser, "#saved") and str(out) in _text(browser, "#saved")
        _click(items[2], "up")  # "four" to the top: four, 4, XSS
        _click(items[2], "up")
        _click(items[0], "down")  # "4" below the script: four, XSS, 4
        assert [i for i, _ in _shown(browser)] == ["2", "1", "0"]
        browser.find_element("id", "submit").click()
        _wait(browser, lambda d: "1 ranking saved" in _text(d, "#saved"))
        _answers(browser, "Name a colour.")  # the next prompt comes up
        lines = _lines(out)
        assert len(lines) == 1
        assert lines[0]["prompt"] == "What is 2 + 2?" and lines[0]["responses"] == ["four", XSS, "4"]
        _check_fields(lines[0], str(cands))
        browser.find_element("id", "skip").click()
        _wait(browser, lambda d: "All prompts ranked" in _text(d, "#status"))
        assert not browser.find_element("id", "submit").is_displayed()
        assert len(_lines(out)) == 1  # a skip writes nothing
    # restart on the same file: the ranked prompt is not asked again, the skipped one is
    with serving(make_server(str(cands), out)) as url:
        browser.get(url)
        _answers(browser, "Name a colour.")
        assert "1 ranking saved" in _text(browser, "#saved")


@pytest.fixture(scope="module")
def tiny_model(sft_run):
    """The tiny model after stage 2 (the session's SFT fixture): the model people rank."""
    return sft_run[1]["export"]


@pytest.mark.tier("system")
def test_rank_page_with_model_samples(tmp_path, browser, tiny_model):
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "prefs.jsonl"
    recs = [
        {
            "messages": [
                {"role": "user", "content": "What does the function `os.path.join` do?"},
                {"role": "assistant", "content": "Joins paths."},
            ]
        },
        {"instruction": "Explain the Python module `json`."},
    ]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with serving(make_server(str(tiny_model), out, n=3, prompts=str(prompts), max_new_tokens=16, temperature=1.0, seed=0)) as url:
        browser.get(url)
        items = _answers(browser, "What does the function `os.path.join` do?", timeout=60)
        shown = _shown(browser)
        assert 2 <= len(items) <= 3 and len({t for _, t in shown}) == len(shown)  # distinct answers
        _click(items[-1], "up")
        order = [t for _, t in _shown(browser)]
        browser.find_element("id", "submit").click()
        _wait(browser, lambda d: "1 ranking saved" in _text(d, "#saved"), timeout=60)
        _answers(browser, "Explain the Python module `json`.", timeout=60)  # sampled for the second prompt
    (rec,) = _lines(out)
    _check_fields(rec, str(tiny_model))
    assert rec["prompt"] == "What does the function `os.path.join` do?"
    norm = [" ".join(t.split()) for t in rec["responses"]]
    assert norm == [" ".join(t.split()) for t in order]


def _token(url):
    """The session token, read from the page as the browser does."""
    with urllib.request.urlopen(url, timeout=10) as r:
        return re.search(r'const TOKEN = "([^"]+)";', r.read().decode()).group(1)


def _request(url, body=None, headers=None, method=None, data=None):
    """(status, JSON reply) of one request; ``body`` is sent as JSON unless ``data`` is given."""
    if data is None and body is not None:
        data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method or ("POST" if data is not None else "GET"))
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url, body, token):
    return _request(url, body, {"Content-Type": "application/json", "X-Xiulian-Token": token})


def _next(url, token):
    code, reply = _request(url + "api/next", headers={"X-Xiulian-Token": token})
    assert code == 200, reply
    return reply


def test_api_validation_and_bad_prompt_files(tmp_path):
    cands, out = tmp_path / "c.jsonl", tmp_path / "prefs.jsonl"
    cands.write_text(json.dumps({"prompt": "p", "responses": ["a", "b", "", "a", " \n", "c"]}) + "\n")
    with serving(make_server(str(cands), out, n=4)) as url:
        token = _token(url)
        shown = _next(url, token)
        assert [a["text"] for a in shown["answers"]] == ["a", "b", "c"]  # the duplicate shown once, empty ones not
        for order in ([0, 1], [0, 1, 1], [0, 1, 3], [0, 1, "2"], "012", None):
            code, body = _post(url + "api/rank", {"id": shown["id"], "order": order}, token)
            assert code == 400 and "permutation" in body["error"], (order, body)
        code, body = _post(url + "api/rank", {"id": shown["id"] + 1, "order": [0, 1, 2]}, token)
        assert code == 400 and "stale" in body["error"]
        assert not out.exists()
        assert _post(url + "api/rank", {"id": shown["id"], "order": [2, 0, 1]}, token) == (200, {"saved": 1})
        assert _next(url, token)["done"] is True
    assert _lines(out)[0]["responses"] == ["c", "a", "b"]

    bad = tmp_path / "prompts.jsonl"
    cases = [
        ('{"instruction": 5}', "instruction: expected a non-empty string"),
        ('{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}', "messages[1].role: unknown role"),
        ('{"messages": [{"role": "system", "content": "be brief"}]}', "messages: no user turn"),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, {"role": "system", "content": "y"}]}',
            "messages[2].role: a system message may only come first",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}]}',
            "messages[1].role: the prompt must end with a user turn",
        ),
        ('{"text": "no prompt field"}', "expected a 'prompt', 'messages' or 'instruction' field"),
        ("{not json", "invalid JSON"),
    ]
    for line, msg in cases:
        bad.write_text('{"prompt": "fine"}\n' + line + "\n")
        with pytest.raises(ChatDataError, match=rf"{bad}:2: ") as e:
            read_prompts(bad)
        assert msg in str(e.value)
    bad.write_text('{"prompt": "p", "responses": "a"}\n')
    with pytest.raises(ChatDataError, match=rf"{bad}:1: responses"):
        read_candidates(bad)
    # the formats: prompt, messages (the final assistant turn dropped, earlier turns as context), alpaca
    good = tmp_path / "good.jsonl"
    good.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"prompt": "a"},
                {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": "x"}]},
                {"instruction": "do", "input": "this"},
            ]
        )
        + "\n"
    )
    ps = read_prompts(good)
    assert [p.text for p in ps] == ["a", "u", "do\n\nthis"]
    assert ps[1].context == [{"role": "system", "content": "s"}]
    assert len(read_prompts("builtin:python-qa")) > 100


class _Fixed:
    """A source with given answers for prompts read from a prompts file."""

    def __init__(self, path, answers):
        self.name, self.prompts, self.answers = "fixed", read_prompts(path), answers

    def sample(self, prompt, n, attempt):
        return list(self.answers[prompt.text])


def test_prompt_with_context_is_written_as_the_conversation(tmp_path):
    from llm.data.preference import record_to_pairs

    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "prefs.jsonl"
    conv = [{"role": "system", "content": "Answer in one word."}, {"role": "user", "content": "Capital of France?"}]
    prompts.write_text(
        "\n".join(
            json.dumps(r)
            for r in [{"messages": [*conv, {"role": "assistant", "content": "Paris"}]}, {"prompt": "Same?"}, {"prompt": "Only one answer"}]
        )
        + "\n"
    )
    answers = {"Capital of France?": ["Paris", "Lyon"], "Same?": ["yes", "no"], "Only one answer": ["x", "x ", ""]}
    with serving(make_server(_Fixed(prompts, answers), out)) as url:
        token = _token(url)
        shown = _next(url, token)
        assert shown["prompt"] == "Capital of France?" and shown["context"] == conv[:1]
        assert _post(url + "api/rank", {"id": shown["id"], "order": [0, 1]}, token) == (200, {"saved": 1})
    (rec,) = _lines(out)
    assert rec["prompt"] == conv and rec["responses"] == ["Paris", "Lyon"]
    assert [(p.prompt, p.chosen, p.rejected) for p in record_to_pairs(rec, "prefs.jsonl:1")] == [(conv, "Paris", "Lyon")]
    with serving(make_server(_Fixed(prompts, answers), out)) as url:  # resumed: the conversation is done
        token = _token(url)  # a new server, a new session
        assert _next(url, token)["prompt"] == "Same?"
        code, body = _post(url + "api/skip", {"id": 0}, token)
        assert code == 200
        assert _next(url, token)["done"] is True  # one distinct answer, even resampled: skipped


def _raw(url, request: bytes, timeout=5) -> tuple[int, str]:
    """Send a hand-written HTTP request (headers a browser would not send); (status, body)."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def test_ranking_api_refuses_cross_site_and_malformed_requests(tmp_path):
    """The attacks the page was open to: another site's form (foreign Origin, text/plain), DNS
    rebinding (a foreign Host), no session token, a huge or negative Content-Length, and ids that
    are not integers. Each is refused with its reason and nothing is written."""
    cands, out = tmp_path / "c.jsonl", tmp_path / "prefs.jsonl"
    cands.write_text(json.dumps({"prompt": "p", "responses": ["a", "b"]}) + "\n")
    server = make_server(str(cands), out, n=2)
    with serving(server) as url:
        token = _token(url)
        shown = _next(url, token)
        good = {"id": shown["id"], "order": [1, 0]}
        hdr = {"Content-Type": "application/json", "X-Xiulian-Token": token}
        # another site's form: text/plain, its own Origin, no token (a form cannot set one)
        code, body = _request(
            url + "api/rank", data=json.dumps(good).encode(), headers={"Content-Type": "text/plain", "Origin": "http://evil.example"}
        )
        assert code == 403 and "evil.example" in body["error"]
        code, body = _request(url + "api/rank", good, {**hdr, "Origin": "http://evil.example"})
        assert code == 403 and "not accepted" in body["error"]
        assert _request(url + "api/rank", good, {"Content-Type": "application/json"})[0] == 403  # no token
        assert _request(url + "api/rank", good, {**hdr, "X-Xiulian-Token": "guess"})[0] == 403
        assert _request(url + "api/next")[0] == 403  # reading the queue needs the token too
        code, body = _request(url + "api/rank", data=json.dumps(good).encode(), headers={**hdr, "Content-Type": "text/plain"})
        assert code == 415 and "application/json" in body["error"]
        # DNS rebinding: the page and the API are served to this server's own names only
        port = url.rstrip("/").rsplit(":", 1)[1]
        code, text = _raw(url, f"GET / HTTP/1.1\r\nHost: rebind.example:{port}\r\nConnection: close\r\n\r\n".encode())
        assert code == 403 and "rebind.example" in text and token not in text
        # a 400 MB body is refused from its header, before anything is read
        req = (
            f"POST /api/rank HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nX-Xiulian-Token: {token}\r\n"
            f"Content-Length: {400 * 2**20}\r\nConnection: close\r\n\r\n"
        ).encode()
        code, text = _raw(url, req)
        assert code == 413 and "at most" in text
        # a negative length answers at once instead of hanging a handler thread
        code, text = _raw(url, req.replace(str(400 * 2**20).encode(), b"-5"))
        assert code == 400 and "byte count" in text
        for bad_id in (True, 1.0, str(shown["id"]), None):
            code, body = _post(url + "api/rank", {**good, "id": bad_id}, token)
            assert code == 400 and "integer" in body["error"], (bad_id, body)
        assert not out.exists()
        assert _post(url + "api/rank", good, token) == (200, {"saved": 1})
    assert _lines(out)[0]["responses"] == ["b", "a"]
