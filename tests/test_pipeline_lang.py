"""Language-aware repetition rules of the stage-1 heuristics (``llm/pipeline/heuristics.py``):
clean Chinese is kept like its English original, repetitive Chinese is still dropped, and the
per-language settings live in the pipeline config (``heuristics.languages``)."""

from __future__ import annotations

import pytest

from tests.fixtures import faq_dir, require_faq


def _doc(text: str, lang: str, source: str = ""):
    from datatrove.data import Document

    return Document(text=text, id="t", metadata={"language": lang, "source": source})


def _filter():
    """The heuristics block as the pipeline builds it from the default config."""
    from llm.data.__main__ import load_config
    from llm.pipeline.heuristics import HeuristicFilter

    h = load_config("python_docs", [])["heuristics"]
    return HeuristicFilter(default=h["default"], languages=h["languages"], sources=h["sources"])


def _kept_share(flt, texts: list[str], lang: str) -> float:
    total = sum(map(len, texts))
    kept = 0
    for text in texts:
        doc = _doc(text, lang)
        if flt.filter(doc) is True:
            kept += len(doc.text)
    return kept / total


def test_clean_chinese_documentation_kept_like_its_english_original():
    """The Debian FAQ's chapters in Chinese against their English originals (the issue: 4-6
    Chinese chapters dropped by gopher_dup_5gram, ~32-39% of the characters, none in English)."""
    require_faq()
    from llm.pipeline.extract import resiliparse_extract

    zh_dir, en_dir = faq_dir("zh"), faq_dir("en")
    pairs = [(en_dir / p.name.replace(".zh-cn.", ".en."), p) for p in sorted(zh_dir.glob("*.zh-cn.html"))]
    pairs = [(en, zh) for en, zh in pairs if en.exists()]
    assert len(pairs) >= 10
    en = [resiliparse_extract(p.read_text(encoding="utf-8")) for p, _ in pairs]
    zh = [resiliparse_extract(p.read_text(encoding="utf-8")) for _, p in pairs]
    flt = _filter()
    en_share, zh_share = _kept_share(flt, en, "en"), _kept_share(flt, zh, "zh")
    assert en_share > 0.9
    assert abs(en_share - zh_share) <= 0.05, (en_share, zh_share)
    reasons = [r for r in (flt.filter(_doc(t, "zh")) for t in zh) if r is not True]
    assert not any(reason.startswith(("gopher_dup_", "gopher_top_")) for _, reason in reasons), reasons


def test_repetitive_chinese_is_still_dropped():
    """Counting in words must not switch the rule off: a page that repeats its sales pitch goes."""
    pitch = "点击这里立即购买最便宜的手机，限时优惠，数量有限，先到先得。"
    body = "我们的商店提供各种各样的电子产品，包括手机、电脑和耳机，所有商品都有质量保证，欢迎您随时来店里参观选购。"
    r = _filter().filter(_doc(body + pitch * 6, "zh"))
    assert r is not True and r[1].startswith(("gopher_dup_", "gopher_top_")), r


def test_chinese_repetition_counted_in_jieba_words():
    from llm.pipeline.heuristics import HeuristicFilter, repetition_words
    from llm.pipeline.text import jieba_words

    assert jieba_words("本文档提供了关于 Debian 发行版的常见问题。") == [
        "本",
        "文档",
        "提供",
        "了",
        "关于",
        "Debian",
        "发行版",
        "的",
        "常见问题",
    ]
    flt = _filter()
    t = flt.thresholds("zh", "", True)
    assert t["repetition_words"] == "jieba"
    ws, scale = repetition_words("软件包管理系统", t, True)
    assert ws == ["软件包", "管理系统"] and scale == 1
    # without the config's language defaults the block counts characters, as before
    ws, scale = repetition_words("软件包管理系统", HeuristicFilter().thresholds("zh", "", True), True)
    assert len(ws) == 7 and scale == 1


def test_japanese_counted_in_characters_with_n_doubled():
    """No Japanese segmenter is installed: a repeated 5-character phrase is not a repeated
    5-word phrase, so the n of the rules doubles for ``ja`` (a 5-gram spans 10 characters)."""
    from llm.pipeline.heuristics import _dup_ngram_fraction, repetition_words

    text = "東京都の天気は晴れです。東京都の人口は多いです。東京都の電車は速いです。東京都の夜景は綺麗です。"
    t = _filter().thresholds("ja", "", True)
    assert t["cjk_chars_per_word"] == 2
    ws, scale = repetition_words(text, t, True)
    assert scale == 2
    low = [w.lower() for w in ws]
    assert _dup_ngram_fraction(low, 5) > 0.15  # character 5-grams: "東京都の" + 1 repeats look like spam
    assert _dup_ngram_fraction(low, 5 * scale) < 0.15  # 10 characters: nothing repeats


def test_language_settings_live_in_the_config_and_are_checked():
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    h = load_config("python_docs", ["+heuristics.languages.zh.min_words=10"])["heuristics"]
    assert h["languages"]["zh"] == {"repetition_words": "jieba", "min_words": 10}  # merged, not replaced
    with pytest.raises(PipelineConfigError, match=r"heuristics.languages.zh.repetition_words='spacy': must be one of"):
        load_config("python_docs", ["heuristics.languages.zh.repetition_words=spacy"])
    with pytest.raises(PipelineConfigError, match=r"heuristics.languages.ja.cjk_chars_per_word=0"):
        load_config("python_docs", ["heuristics.languages.ja.cjk_chars_per_word=0"])
