"""SFT data: formats, validation errors naming file/line/field, assistant-only labels checked
token by token (framework template and SmolLM2's ChatML), truncation reporting, mixing, and
packing without attention across conversations."""

from __future__ import annotations

import json

import pytest
import torch

from llm.data import chat
from llm.data.chat import ChatDataError, DatasetSpec, encode_conversation, read_conversations

MULTI = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there 😀"},
    {"role": "assistant", "content": "Hello! 你好"},
    {"role": "user", "content": "Again"},
    {"role": "assistant", "content": "Sure."},
]


@pytest.fixture(scope="module")
def tok(demo_data):
    from llm.data.tokenizer import load_tokenizer

    t = load_tokenizer(demo_data[0].name_or_path)
    assert chat.ensure_chat_template(t) == []  # the stage-1 tokenizer already has the markers
    return t


def _labelled(tok, ex):
    """(token text, carries loss) for every position of the full sequence."""
    full = ex.input_ids + [ex.labels[-1]]  # the last token (the end-of-turn) is only a label
    carries = [False] + [lab != -100 for lab in ex.labels]
    # labels[t] == full[t + 1] wherever it carries loss
    for t, lab in enumerate(ex.labels):
        if lab != -100:
            assert lab == full[t + 1]
    return full, carries


def test_default_template_assistant_tokens_exactly(tok):
    text = chat.render_text(tok, MULTI)
    assert text == (
        "<|system|>Be brief.<|end|><|user|>Hi there 😀<|end|><|assistant|>Hello! 你好<|end|><|user|>Again<|end|><|assistant|>Sure.<|end|>"
    )
    ex = encode_conversation(tok, MULTI)
    ids = tok(text, add_special_tokens=False).input_ids
    assert ex.input_ids == ids[:-1]
    carries = [False] + [lab != -100 for lab in ex.labels]
    # expected, token by token: assistant content and its <|end|>; nothing else
    expected, inside = [], False
    end_id, asst_id = tok.convert_tokens_to_ids(["<|end|>", "<|assistant|>"])
    for i in ids:
        if i == asst_id:
            expected.append(False)
            inside = True
            continue
        expected.append(inside)
        if i == end_id:
            inside = False
    assert carries == expected
    got = tok.decode([i for i, c in zip(ids, carries) if c])
    assert got == "Hello! 你好<|end|>Sure.<|end|>"
    assert ex.n_assistant == sum(expected)


@pytest.mark.tier("system")
def test_chatml_template_of_a_real_checkpoint():
    from transformers import AutoTokenizer

    from fixtures import smollm2_dir

    t = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    assert t.chat_template and chat.ensure_chat_template(t) == []  # its own template is kept
    ex = encode_conversation(t, MULTI)
    full, carries = _labelled(t, ex)
    pieces = t.decode([i for i, c in zip(full, carries) if c])
    assert pieces == "Hello! 你好<|im_end|>Sure.<|im_end|>"
    # the role header "<|im_start|>assistant\n" and the newline after <|im_end|> carry no loss
    text = chat.render_text(t, MULTI)
    assert "<|im_start|>assistant\nHello! 你好<|im_end|>\n" in text
    assert t.convert_ids_to_tokens(chat.end_of_turn_token(t)) == "<|im_end|>"


def test_template_added_to_a_tokenizer_without_one():
    """A checkpoint with no template gets the framework default and its tokens added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["Hello there, how are you?"] * 4,
        trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    bare = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>")
    assert not bare.chat_template and bare.pad_token is None
    n = len(bare)
    added = chat.ensure_chat_template(bare)
    assert added == ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"] and len(bare) == n + 4
    assert bare.pad_token == "<eos>"
    ex = encode_conversation(bare, MULTI)
    full, carries = _labelled(bare, ex)
    assert bare.decode([i for i, c in zip(full, carries) if c]) == "Hello! 你好<|end|>Sure.<|end|>"


def _write(tmp_path, rows, name="d.jsonl"):
    p = tmp_path / name
    p.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
    return p


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"messages": [{"content": "q"}, {"role": "assistant", "content": "a"}]}, "messages[0].role: missing role"),
        ({"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}, "messages[0].content: empty content"),
        ({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}, "messages[0].role: unknown role 'bot'"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "and?"}]},
            "messages[2].role: the conversation ends with 'user'",
        ),
        ({"messages": [{"role": "assistant", "content": "a"}]}, "messages[0].role: an assistant turn before any user turn"),
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]},
            "messages[1].role: a system message may only come first",
        ),
        ({"instruction": "q"}, "output: missing field"),
        (
            {"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]},
            "conversations[1].from: unknown role 'robot'",
        ),
        ({"text": "no format"}, "cannot tell the format"),
        ('{"messages": [', "invalid JSON"),
    ],
)
def test_bad_rows_name_file_line_field(tmp_path, bad, where):
    p = _write(tmp_path, [GOOD, GOOD, bad, GOOD])
    with pytest.raises(ChatDataError) as e:
        read_conversations(str(p))
    assert f"{p}:3: " in str(e.value) and where in str(e.value)
    convs, rep = read_conversations(str(p), on_error="skip")
    assert len(convs) == 3 and rep.read == 4 and sum(rep.skipped.values()) == 1


def test_skip_counts_by_reason(tmp_path):
    rows = [
        GOOD,
        {"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "pirate", "content": "q"}, {"role": "assistant", "content": "a"}]},
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]},
    ]
    convs, rep = read_conversations(str(_write(tmp_path, rows)), on_error="skip")
    assert len(convs) == 1
    assert rep.skipped == {"messages[].role: unknown role '…'": 2, "messages[].content: empty content": 1}


def test_formats_agree(tmp_path):
    openai = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "Do X\n\nwith Y"},
            {"role": "assistant", "content": "Done"},
        ]
    }
    alpaca = {"system": "S", "instruction": "Do X", "input": "with Y", "output": "Done"}
    share = {
        "conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Do X\n\nwith Y"}, {"from": "gpt", "value": "Done"}]
    }
    got = [read_conversations(str(_write(tmp_path, [r], f"{i}.jsonl")))[0][0].messages for i, r in enumerate([openai, alpaca, share])]
    assert got[0] == got[1] == got[2] == openai["messages"]
    lst = tmp_path / "l.json"
    lst.write_text(json.dumps([alpaca, alpaca]))
    assert len(read_conversations(str(lst))[0]) == 2


def test_task_template_turns_labels_into_instructions(tmp_path):
    p = _write(tmp_path, [{"text": "今天天氣真好", "label": "正面"}, {"text": "今天運氣真差", "label": "負面"}])
    convs, _ = read_conversations(DatasetSpec(str(p), format="task", template="sentiment"))
    assert convs[0].messages[0]["content"].endswith("今天天氣真好") and convs[0].messages[1]["content"] == "正面"
    convs, _ = read_conversations(DatasetSpec(str(p), format="task", template="Sentiment of: {text}", answer="It is {label}."))
    assert convs[1].messages == [{"role": "user", "content": "Sentiment of: 今天運氣真差"}, {"role": "assistant", "content": "It is 負面."}]
    with pytest.raises(ChatDataError, match=r":1: review: missing field"):
        read_conversations(DatasetSpec(str(p), format="task", template="{review}"))


def test_mixture_weights(tmp_path):
    a = [chat.Conversation(GOOD["messages"], f"a{i}") for i in range(10)]
    b = [chat.Conversation(GOOD["messages"], f"b{i}") for i in range(10)]
    m = chat.mix([(DatasetSpec("a", weight=3), a), (DatasetSpec("b", weight=0.5), b)], seed=0)
    names = [c.origin[0] for c in m]
    assert names.count("a") == 30 and names.count("b") == 5
    assert len({c.origin for c in m if c.origin[0] == "b"}) == 5  # a subset, no repeats
    assert [c.origin for c in m] == [
        c.origin for c in chat.mix([(DatasetSpec("a", weight=3), a), (DatasetSpec("b", weight=0.5), b)], seed=0)
    ]


def test_truncation_reported_never_silent(tok):
    from llm.data.sft import encode_all

    long_q = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "short"}]
    long_a = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer " * 200}]
    convs = [chat.Conversation(MULTI, "f:1"), chat.Conversation(long_q, "f:2"), chat.Conversation(long_a, "f:3")]
    exs, counts = encode_all(convs, tok, seq_len=64, progress=False)
    assert counts["truncated"] == 2 and counts["dropped_no_assistant_tokens"] == 1 and len(exs) == 2
    assert all(len(e.input_ids) <= 64 for e in exs) and not exs[0].truncated and exs[1].truncated
    with pytest.raises(ChatDataError, match=r"f:2: truncation to seq_len=64 leaves no assistant token"):
        encode_all(convs, tok, seq_len=64, on_truncated="error", progress=False)


def test_many_cut_conversations_warn_with_count_share_and_file(tok, caplog):
    from llm.data.sft import SFTDataModule

    long_a = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "answer " * 200}]
    convs = [chat.Conversation(MULTI, f"ok.jsonl:{i}") for i in range(1, 9)] + [chat.Conversation(long_a, "big.jsonl:4")] * 2
    with caplog.at_level("WARNING", logger="llm.data.steps"):
        dm = SFTDataModule(convs, [], tok, seq_len=64, micro_batch_size=2)
    assert "2 of 10 train conversations (20%) were cut at data.seq_len=64" in caplog.text and "big.jsonl (2)" in caplog.text
    rep = dm.report()["train"]
    assert rep["truncated"] == 2 and rep["truncated_share"] == 0.2 and rep["truncated_files"] == {"big.jsonl": 2}
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm.data.steps"):
        SFTDataModule(convs, [], tok, seq_len=64, micro_batch_size=2, warn_truncated_share=0.25)
    assert "were cut" not in caplog.text


def _tiny_model(vocab, arch="llama"):
    from llm.config import ModelConfig
    from llm.model.build import build_model

    torch.manual_seed(0)
    cfg = ModelConfig(
        name="t",
        arch=arch,
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2 if arch == "llama" else None,
        intermediate_size=128,
        max_seq_len=128,
    )
    return build_model(cfg, vocab).eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_packed_and_unpacked_give_the_same_loss(tok, arch):
    from llm.data.chat import collate_rows, pack
    from llm.losses import token_nll_sum

    convs = [
        MULTI,
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sky."}],
    ]
    exs = [encode_conversation(tok, c) for c in convs]
    model = _tiny_model(len(tok), arch)
    rows = pack(exs, 128)
    assert len(rows) == 1 and sorted(rows[0]) == [0, 1, 2]  # all three in one row
    packed = collate_rows(exs, rows, tok.pad_token_id, packed=True, length=128)
    first = exs[rows[0][0]]
    unpacked = collate_rows(exs, [[0], [1], [2]], tok.pad_token_id, packed=False, length=max(len(e.input_ids) for e in exs))
    assert packed["position_ids"][0, len(first.input_ids)] == 0  # positions restart per conversation
    with torch.no_grad():
        lp, np_ = token_nll_sum(
            model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits, packed["labels"]
        )
        lu, nu = token_nll_sum(
            model(input_ids=unpacked["input_ids"], attention_mask=unpacked["attention_mask"], use_cache=False).logits, unpacked["labels"]
        )
    assert np_ == nu == sum(sum(1 for x in e.labels if x != -100) for e in exs)
    assert torch.allclose(lp / np_, lu / nu, rtol=1e-5, atol=1e-5)
    # and the block-diagonal mask is what makes them equal: with plain positions they differ
    with torch.no_grad():
        lc, _ = token_nll_sum(model(input_ids=packed["input_ids"], use_cache=False).logits, packed["labels"])
    assert not torch.allclose(lc, lp, rtol=1e-4)


def test_best_fit_packing():
    from llm.data.chat import Encoded, pack

    exs = [Encoded([0] * n, [0] * n, n, False) for n in (6, 5, 4, 3, 2, 7, 1)]
    rows = pack(exs, 10)
    assert sorted(i for r in rows for i in r) == list(range(7))  # each exactly once
    assert all(sum(len(exs[i].input_ids) for i in r) <= 10 for r in rows)
    assert len(rows) == 3  # 28 tokens: the minimum number of rows of 10
    with pytest.raises(ValueError, match="example 0 has 11 tokens"):
        pack([Encoded([0] * 11, [0] * 11, 11, False)], 10)


def test_builtin_python_qa_is_real_and_stable():
    qa = chat.builtin_python_qa()
    assert len(qa) > 500
    assert qa == chat.builtin_python_qa()
    assert any(r["instruction"] == "What is the Python module `csv` for?" for r in qa)
    assert all(40 <= len(r["output"]) <= 400 for r in qa)


def _latin1_file(tmp_path, rows: list, bad_at: int):
    """JSON lines with one line encoded as Latin-1 ('café' -> byte e9): not UTF-8."""
    p = tmp_path / "mixed.jsonl"
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in rows]
    lines.insert(
        bad_at - 1,
        json.dumps(
            {"messages": [{"role": "user", "content": "café?"}, {"role": "assistant", "content": "oui"}]}, ensure_ascii=False
        ).encode("latin-1"),
    )
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def test_non_utf8_line_is_named_and_skippable_in_every_reader(tmp_path):
    from llm.data.preference import read_preferences, read_prompts
    from llm.rank import read_prompts as rank_prompts

    pair = {"prompt": "q", "chosen": "good", "rejected": "bad"}
    readers = [
        ("sft", lambda p, on: read_conversations(str(p), on_error=on), [GOOD, GOOD, GOOD]),
        ("preference", lambda p, on: read_preferences(str(p), on_error=on), [pair, pair, pair]),
        ("prompts", lambda p, on: read_prompts(str(p), on_error=on), [GOOD, GOOD, GOOD]),
    ]
    for name, read, rows in readers:
        (tmp_path / name).mkdir()
        p = _latin1_file(tmp_path / name, rows, bad_at=2)
        with pytest.raises(ChatDataError) as e:
            read(p, "error")
        assert f"{p}:2: not UTF-8 text (byte e9" in str(e.value), (name, str(e.value))
        items, rep = read(p, "skip")
        assert rep.read == 4 and rep.kept == 3 and sum(rep.skipped.values()) == 1, (name, rep)
    p = _latin1_file(tmp_path, [{"prompt": "a"}, {"prompt": "b"}], bad_at=3)
    with pytest.raises(ChatDataError, match=rf"{p}:3: not UTF-8 text"):
        rank_prompts(p)
    whole = tmp_path / "latin1.json"
    whole.write_bytes('[\n{"instruction": "q", "output": "a"},\n{"instruction": "café", "output": "a"}\n]'.encode("latin-1"))
    with pytest.raises(ChatDataError, match=rf"{whole}:3: not UTF-8 text"):
        read_conversations(str(whole))
