"""``python -m llm.bench.data_lang``: how much clean Chinese the stage-1 heuristics keep, against
its English original, with the repetition rules counting Chinese in characters (before) and in
words (jieba, the default), and the character-level alternative (every n doubled).

The material is what Debian installs (``bash launch/fixtures.sh``; ``debian-faq``,
``debian-faq-zh-cn``, ``fortunes-zh``):

* the Debian FAQ's HTML chapters in Simplified Chinese and their English originals (the same
  file names), extracted by the pipeline's extractor;
* the same FAQ as plain text (``debian-faq.{en,zh-cn}.txt.gz``) cut at its numbered sections,
  the aligned chunks one would feed as JSONL;
* fortunes-zh (``chinese``, ``tang300``, ``song100``; ANSI colour codes stripped) against the
  English fortunes, with the ``python_docs`` config's per-source thresholds.

Each document gets its language from the pipeline's language id and goes through the heuristics
block (``llm/pipeline/heuristics.py``); a figure is the share of the input's characters that
come out (a dropped document loses all its characters, a kept one the C4 lines removed). The
calibration table gives, per aligned page, the repeated-5-gram statistic of each way of counting:
the one whose Chinese values look like the English ones can use the English thresholds.
``--markdown BENCHMARKS.md`` appends the tables. About 20 s.
"""

from __future__ import annotations

import gzip
import os
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from llm.bench.common import append_section, argument_parser, command_line, md_table, utc_stamp

FAQ = Path("/usr/share/doc/debian/FAQ")
FORTUNES = Path("/usr/share/games/fortunes")
ZH_FORTUNES = ("chinese", "tang300", "song100")
_SECTION = re.compile(r"(?m)^(\d+(?:\.\d+)+)\.\s")

#: the ways of counting Chinese measured: name -> heuristics.languages.zh overrides
VARIANTS = {
    "characters (before)": {"repetition_words": "regex", "cjk_chars_per_word": 1},
    "jieba words (default)": {"repetition_words": "jieba"},
    "characters, n doubled": {"repetition_words": "regex", "cjk_chars_per_word": 2},
}


def say(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def faq_pages() -> list[tuple[str, str, str]]:
    """(name, English text, Chinese text) of every FAQ chapter in both languages, extracted."""
    from llm.pipeline.extract import resiliparse_extract

    out = []
    for zh in sorted((FAQ / "zh-cn").glob("*.zh-cn.html")):
        en = FAQ / zh.name.replace(".zh-cn.", ".en.")
        if en.exists():
            out.append((zh.name.split(".")[0], resiliparse_extract(en.read_text()), resiliparse_extract(zh.read_text())))
    return out


def faq_sections() -> list[tuple[str, str, str]]:
    """(section number, English, Chinese) of the plain-text FAQ cut at its numbered sections."""

    def cut(lang: str) -> dict[str, str]:
        text = gzip.open(FAQ / f"debian-faq.{lang}.txt.gz", "rt", encoding="utf-8").read()
        marks = list(_SECTION.finditer(text))
        return {m[1]: text[m.start() : (marks[i + 1].start() if i + 1 < len(marks) else len(text))].strip() for i, m in enumerate(marks)}

    en, zh = cut("en"), cut("zh-cn")
    return [(k, en[k], zh[k]) for k in en if k in zh]


def fortunes(names) -> list[tuple[str, str]]:
    from llm.pipeline.text import strip_ansi

    out = []
    for name in names:
        for rec in (FORTUNES / name).read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            rec = strip_ansi(rec).strip()
            if rec:
                out.append((name, rec))
    return out


def english_fortune_files() -> list[str]:
    return sorted(p.name for p in FORTUNES.iterdir() if p.is_file() and "." not in p.name and p.name not in ZH_FORTUNES)


def kept_share(docs: list[tuple[str, str]], zh_over: dict, lid, source: str = "", sources: dict | None = None) -> dict:
    """Share of characters the heuristics block keeps, documents dropped per reason, seconds."""
    from datatrove.data import Document

    from llm.pipeline.heuristics import LANGUAGE_DEFAULTS, HeuristicFilter

    langs = {k: dict(v) for k, v in LANGUAGE_DEFAULTS.items()}
    langs["zh"] = dict(zh_over)
    f = HeuristicFilter(languages=langs, sources=sources)
    total = kept = 0
    reasons: Counter = Counter()
    t = time.perf_counter()
    for name, text in docs:
        doc = Document(text=text, id=name, metadata={"language": lid(text)[0], "source": source})
        total += len(text)
        r = f.filter(doc)
        if r is True:
            kept += len(doc.text)
        else:
            reasons[r[1]] += 1
    return {"share": kept / max(1, total), "docs": len(docs), "chars": total, "dropped": dict(reasons), "seconds": time.perf_counter() - t}


def dup5(text: str, how: str) -> float:
    from llm.pipeline.heuristics import _dup_ngram_fraction
    from llm.pipeline.text import jieba_words, words

    if how == "words":
        return _dup_ngram_fraction([w.lower() for w in words(text)], 5)
    if how == "jieba":
        return _dup_ngram_fraction([w.lower() for w in jieba_words(text)], 5)
    return _dup_ngram_fraction([w.lower() for w in words(text)], 5 * int(how))  # characters, n times how


def measure() -> dict:
    from llm.pipeline.heuristics import DEFAULTS
    from llm.pipeline.langid import LanguageId

    for need in (FAQ / "zh-cn", FAQ / "debian-faq.en.txt.gz", FORTUNES / "chinese"):
        if not need.exists():
            raise SystemExit(f"{need} is missing: run `bash launch/fixtures.sh` as root (debian-faq, debian-faq-zh-cn, fortunes-zh)")
    lid = LanguageId()
    from llm.pipeline.text import jieba_words

    jieba_words("预热")  # the dictionary loads once (~1 s), not inside a timing
    pages, sections = faq_pages(), faq_sections()
    say(f"{len(pages)} aligned FAQ pages, {len(sections)} aligned sections")
    res: dict = {"pages": len(pages), "sections": len(sections), "kept": [], "calibration": [], "fortunes": []}
    for label, items in (("Debian FAQ, HTML chapters", pages), ("Debian FAQ, plain-text sections", sections)):
        en = kept_share([(n, e) for n, e, _ in items], {}, lid)
        row = {"material": label, "docs": len(items), "en": en, "zh": {}}
        for name, over in VARIANTS.items():
            row["zh"][name] = kept_share([(n, z) for n, _, z in items], over, lid)
        res["kept"].append(row)
        say(label, f"en {en['share']:.3f}", {k: round(v["share"], 3) for k, v in row["zh"].items()})
    for how, label, texts in (
        ("words", "English, words", [e for _, e, _ in pages]),
        ("1", "Chinese, characters (before)", [z for *_, z in pages]),
        ("jieba", "Chinese, jieba words", [z for *_, z in pages]),
        ("2", "Chinese, characters, n doubled", [z for *_, z in pages]),
    ):
        vals = [dup5(t, how) for t in texts]
        over = sum(v > DEFAULTS["dup_ngram_max_fraction"][5] for v in vals)
        res["calibration"].append({"counting": label, "median": statistics.median(vals), "max": max(vals), "over_threshold": over})
    # fortunes: the python_docs config's per-source thresholds (short quotes)
    src = {"fortunes": {"min_words": 5, "min_stop_words": 1, "max_symbol_word_ratio": 0.3}, "fortunes_zh": {"min_words": 8}}
    en = kept_share(fortunes(english_fortune_files()), {}, lid, "fortunes", src)
    zh_docs = fortunes(ZH_FORTUNES)
    row = {"material": "fortunes (English) / fortunes-zh", "docs": len(zh_docs), "en": en, "zh": {}}
    for name, over in VARIANTS.items():
        row["zh"][name] = kept_share(zh_docs, over, lid, "fortunes_zh", src)
    res["fortunes"].append(row)
    return res


def _ngram_drops(r: dict) -> int:
    return sum(n for k, n in r["dropped"].items() if re.fullmatch(r"gopher_(top|dup)_\d+gram", k))


def _top(r: dict, k: int = 4) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in Counter(r["dropped"]).most_common(k)) or "none"


def tables(res: dict) -> list[str]:
    names = list(VARIANTS)
    rows = []
    for row in res["kept"] + res["fortunes"]:
        en = row["en"]["share"]
        cells = [row["material"], f"{row['docs']} / {row['en']['docs']}", f"{en:.1%}"]
        for name in names:
            z = row["zh"][name]
            cells.append(f"{z['share']:.1%} ({z['share'] - en:+.1%}; {_ngram_drops(z)} by n-gram rules)")
        rows.append(cells)
    out = [
        "Share of the input's characters kept by the heuristics block (Gopher quality + repetition, C4 lines);"
        " in brackets: points from the English share, and documents dropped by an n-gram repetition rule.",
        "",
        *md_table(
            ["material", "documents zh / en", "English kept", *[f"Chinese kept, {n}" for n in names]], rows, "lrr" + "r" * len(names)
        ),
        "",
        *[
            f"- {row['material']}: documents dropped, English {_top(row['en'])}; Chinese (jieba words) {_top(row['zh'][names[1]])}"
            for row in res["kept"] + res["fortunes"]
        ],
        "",
        f"Calibration: the repeated-5-gram statistic (share of characters in a 5-gram seen earlier; threshold 0.15) on the {res['pages']}"
        " aligned HTML chapters.",
        "",
        *md_table(
            ["counting", "median", "max", "pages over 0.15"],
            [[c["counting"], f"{c['median']:.3f}", f"{c['max']:.3f}", c["over_threshold"]] for c in res["calibration"]],
            "lrrr",
        ),
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("llm.bench.data_lang", __doc__, whole_doc=True)
    ap.add_argument("--markdown", help="append the tables to this file (e.g. BENCHMARKS.md)")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    res = measure()
    lines = tables(res)
    print("\n".join(lines))
    if args.markdown:
        head = [f"- command: `{command_line('llm.bench.data_lang', argv)}`", ""]
        append_section(
            Path(args.markdown), f"{utc_stamp()} -- stage-1 heuristics: clean Chinese against its English original", head + lines
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
