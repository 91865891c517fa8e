"""Tokenizer and raw-text reading, on real text (CPython's own documentation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llm.data.text import BUILTIN_PYTHON_DOCS, builtin_python_docs, iter_documents
from llm.data.tokenizer import SPECIAL_TOKENS, load_tokenizer, train_tokenizer

CHINESE = [
    "床前明月光，疑是地上霜。",
    "举头望明月，低头思故乡。\n——李白《静夜思》",
    "修練（xiūliàn）：大型语言模型的训练框架。",
]
EMOJI = ["😀🎉👩‍👩‍👧‍👦 ok 🇨🇳", "naïve café – “quotes” ‘single’ … ½ ∑ x² ≠ y"]
WHITESPACE = ["", " ", "  leading", "trailing  ", "a\tb\t\tc", "\n\n\nx\r\n y \u3000全角空格", "   \n \t "]


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    train_tokenizer(builtin_python_docs(), vocab_size=512, out_dir=out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def roundtrip(tokenizer, text: str) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer.decode(ids)


def test_builtin_python_docs_is_real_and_deterministic():
    docs = builtin_python_docs()
    assert len(docs) > 1000
    assert sum(map(len, docs)) > 1_000_000
    assert any(d.startswith('The "for" statement') for d in docs)  # pydoc topic text
    assert all(isinstance(d, str) and d for d in docs)
    assert list(iter_documents([BUILTIN_PYTHON_DOCS])) == list(docs)


def test_special_tokens_have_reserved_ids(tok):
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3, 4, 5]
    assert tok.eos_token_id == 0 and tok.bos_token_id == 0 and tok.pad_token_id == 1
    assert tok.unk_token is None
    assert len(tok) == 512
    # a chat turn marked up with the special tokens encodes them as single ids
    ids = tok("<|user|>hi<|end|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 3 and ids[-1] == 5
    # no special tokens are added implicitly
    assert 0 not in tok("hello world", add_special_tokens=True)["input_ids"]


def test_roundtrip_english_docs(tok):
    docs = builtin_python_docs()
    sample = list(docs[:40]) + list(docs[-40:])
    for text in sample:
        assert roundtrip(tok, text) == text
    # the tokenizer actually compresses English (merges were learned)
    n_chars = sum(len(t) for t in sample)
    n_tokens = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in sample)
    assert n_tokens < 0.7 * n_chars


@pytest.mark.parametrize("text", CHINESE + EMOJI + WHITESPACE)
def test_roundtrip_unicode_and_whitespace(tok, text):
    assert roundtrip(tok, text) == text


def test_arbitrary_bytes_are_covered(tok):
    # every one of the 256 byte symbols is in the vocabulary, so nothing maps to an unknown
    text = "".join(chr(c) for c in range(1, 0x800, 7)) + "\U0001f600\U0010ffff"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert all(0 <= i < len(tok) for i in ids)


def test_autotokenizer_loads_saved_dir(tok_dir, tok):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tok_dir))
    assert {p.name for p in tok_dir.iterdir()} >= {"tokenizer.json", "tokenizer_config.json"}
    for text in CHINESE + EMOJI + [builtin_python_docs()[0][:2000]]:
        ids = auto(text, add_special_tokens=False)["input_ids"]
        assert ids == tok(text, add_special_tokens=False)["input_ids"]
        assert auto.decode(ids) == text
    assert auto.eos_token == "<|endoftext|>" and auto.pad_token == "<|pad|>"


def test_retrain_replaces_atomically(tmp_path):
    out = tmp_path / "tok"
    docs = builtin_python_docs()[:60]
    train_tokenizer(docs, vocab_size=300, out_dir=out, show_progress=False)
    first = (out / "tokenizer.json").read_text()
    tok2 = train_tokenizer(docs, vocab_size=400, out_dir=out, show_progress=False)
    assert (out / "tokenizer.json").read_text() != first
    assert len(load_tokenizer(out)) == len(tok2) == 400
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]  # no temp/backup dirs left


def test_train_tokenizer_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], vocab_size=100, out_dir=tmp_path / "t")
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([], vocab_size=300, out_dir=tmp_path / "t", show_progress=False)
    assert not (tmp_path / "t").exists()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


# ---------------------------------------------------------------- raw text sources


def test_iter_documents_files_dirs_and_jsonl(tmp_path):
    root = tmp_path / "corpus"
    (root / "b").mkdir(parents=True)
    (root / "a.txt").write_text(CHINESE[0], encoding="utf-8")
    (root / "b" / "c.md").write_text("# Title\n\nbody", encoding="utf-8")
    (root / "b" / "empty.rst").write_text("", encoding="utf-8")
    (root / "notes.csv").write_text("ignored,in,directories", encoding="utf-8")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.txt").write_text("hidden directories are skipped", encoding="utf-8")
    rows = [{"text": EMOJI[0], "id": 1}, {"text": ""}, {"text": "line two", "meta": {"x": 1}}]
    (root / "d.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n\n")
    got = list(iter_documents([str(root)]))
    assert got == [CHINESE[0], "# Title\n\nbody", EMOJI[0], "line two"]
    # explicit files, in the given order; a custom field
    (tmp_path / "q.jsonl").write_text(json.dumps({"content": "custom field"}) + "\n")
    assert list(iter_documents([str(tmp_path / "q.jsonl")], text_field="content")) == ["custom field"]


def test_jsonl_errors_name_file_line_and_field(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{"text": "broken"\n')
    with pytest.raises(ValueError, match=rf"{bad_json}:2: invalid JSON"):
        list(iter_documents([str(bad_json)]))

    missing = tmp_path / "missing.jsonl"
    missing.write_text('{"text": "ok"}\n\n{"body": "no text here"}\n')
    with pytest.raises(ValueError, match=rf"{missing}:3: missing field 'text'"):
        list(iter_documents([str(missing)]))

    wrong_type = tmp_path / "type.jsonl"
    wrong_type.write_text('{"text": ["a", "list"]}\n')
    with pytest.raises(ValueError, match=rf"{wrong_type}:1: field 'text' must be a string"):
        list(iter_documents([str(wrong_type)]))

    with pytest.raises(ValueError, match=rf"{missing}:1: missing field 'body'"):
        list(iter_documents([str(missing)], text_field="body"))


def test_text_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(iter_documents([str(tmp_path / "nope.txt")]))
    csv = tmp_path / "x.csv"
    csv.write_text("a,b")
    with pytest.raises(ValueError, match=r"x\.csv: unsupported file type"):
        list(iter_documents([str(csv)]))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt: not valid UTF-8"):
        list(iter_documents([str(latin1)]))
    with pytest.raises(ValueError, match="unknown builtin"):
        list(iter_documents(["builtin:nope"]))
