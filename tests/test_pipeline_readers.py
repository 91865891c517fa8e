"""The stage-1 readers (llm/pipeline/readers.py) on input users bring: pages that declare no
charset (GBK, Big5, Shift-JIS, cp1252), compressed files, Parquet, Hugging Face datasets saved to
disk, jsonl shards with a chosen text field and Wikipedia XML dumps. Every file is written here."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest

FORTUNES_ZH = Path("/usr/share/games/fortunes/chinese")  # Debian fortunes-zh (UTF-8)
ZH_FALLBACK = "请时刻留心您所写的内容，它会被成百上千的人阅读。书写简短的邮件意味着人们可以尽可能高效地理解一次对话。"
BIG5 = "臺灣是一個位於東亞的島嶼，氣候溫暖潮濕，物產豐富。這裡的人們熱情好客，夜市小吃聞名世界。"
SJIS = "吾輩は猫である。名前はまだ無い。どこで生れたかとんと見当がつかぬ。何でも薄暗いじめじめした所でニャーニャー泣いていた事だけは記憶している。"
CP1252 = "Pour le dessert : café crème brûlée."


def _zh_text() -> str:
    """A few Chinese fortunes (fortunes-zh) that GBK can encode, colour codes removed."""
    if not FORTUNES_ZH.is_file():
        return ZH_FALLBACK
    recs = [re.sub(r"\x1b\[[0-9;]*m", "", r).strip() for r in FORTUNES_ZH.read_text(encoding="utf-8").split("\n%\n")]
    ok = []
    for r in recs[:200]:
        try:
            r.encode("gbk")
        except UnicodeEncodeError:
            continue
        if sum("\u4e00" <= c <= "\u9fff" for c in r) > 40:
            ok.append(r)
    return "\n\n".join(ok[:2]) or ZH_FALLBACK


def _has(text: str, page: str) -> bool:
    """Every paragraph of ``text`` is in ``page``, character for character."""
    return all(p in page for p in text.split("\n\n"))


def _page(text: str, head: str = "") -> str:
    body = "".join(f"<p>{p}</p>\n" for p in text.split("\n\n"))
    return f"<html><head>{head}<title>page</title></head><body>\n{body}</body></html>"


def _stats(reader) -> dict:
    return {k: v.total for k, v in reader.stats.stats.items()}


def _run(kind: str, path: Path, **spec):
    from llm.pipeline.readers import make_reader

    reader = make_reader({"name": "src", "kind": kind, "path": str(path), **spec})
    docs = list(reader.run())
    return docs, _stats(reader)


def _warc_record(uri: str, body: bytes, ctype: str = "text/html") -> bytes:
    http = f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n\r\n".encode() + body
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\nWARC-Record-ID: <urn:uuid:{abs(hash(uri))}>\r\n"
        f"WARC-Date: 2024-01-01T00:00:00Z\r\nContent-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


# ----------------------------------------------------------------------------- charsets

CASES = [("gbk", "zh"), ("big5", BIG5), ("shift_jis", SJIS), ("cp1252", CP1252)]


@pytest.mark.parametrize("encoding,text", CASES, ids=[c[0] for c in CASES])
def test_undeclared_charset_is_detected(tmp_path, encoding, text):
    """A page that declares no charset and is not UTF-8 reads as its text: not dropped as
    undecodable, not mojibake (``caf� cr�me br�l�e``), in an HTML file, a WARC record whose HTTP
    header names no charset, and a text file."""
    text = _zh_text() if text == "zh" else text
    raw = _page(text).encode(encoding)
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "page.html").write_bytes(raw)
    (tmp_path / "warc").mkdir()
    (tmp_path / "warc" / "crawl.warc").write_bytes(_warc_record("http://example.org/p", raw))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "page.txt").write_bytes(text.encode(encoding))
    for kind in ("html", "warc", "txt"):
        docs, stats = _run(kind, tmp_path / kind)
        assert len(docs) == 1, (kind, stats)
        assert _has(text, docs[0].text), (kind, docs[0].text[:200])
        assert not any(k.startswith("bad_") for k in stats), (kind, stats)


def test_declared_charset_is_honoured_before_detection(tmp_path):
    """A <meta charset> (or the HTTP header of a WARC record, or a <meta> inside its body) wins over
    what detection would say: byte 0xA4 is the euro sign in ISO-8859-15, ¤ in cp1252; a page
    labelled gb2312 is read as GBK (the browsers' superset) and a WARC body's own <meta> is used."""
    price = "Le café coûte 5 \xa4 ici, et la crème brûlée coûte 7 \xa4.".encode("latin-1")
    (tmp_path / "html").mkdir()
    (tmp_path / "html" / "a.html").write_bytes(b'<html><head><meta charset="iso-8859-15"></head><body><p>' + price + b"</p></body></html>")
    zh = _zh_text()
    (tmp_path / "html" / "b.html").write_bytes(
        _page(zh, '<meta http-equiv="Content-Type" content="text/html; charset=gb2312">').encode("gbk")
    )
    docs, _ = _run("html", tmp_path / "html")
    texts = {Path(d.metadata["path"]).name: d.text for d in docs}
    assert "coûte 5 € ici" in texts["a.html"]
    assert _has(zh, texts["b.html"])
    (tmp_path / "warc").mkdir()
    (tmp_path / "warc" / "c.warc").write_bytes(
        _warc_record("http://example.org/header", b"<p>" + price + b"</p>", "text/html; charset=iso-8859-15")
        + _warc_record("http://example.org/meta", b'<meta charset="iso-8859-15"><p>' + price + b"</p>")
    )
    docs, _ = _run("warc", tmp_path / "warc")
    assert len(docs) == 2 and all("coûte 5 € ici" in d.text for d in docs), [d.text for d in docs]


# ----------------------------------------------------------------------------- compression


def _compressors():
    import zstandard

    return {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress, "zst": zstandard.ZstdCompressor().compress}


def test_compressed_inputs_read_like_plain_ones(tmp_path):
    """.gz, .bz2, .xz and .zst files of every kind give the documents of the plain
    file, none counted as bad input."""
    html = _page("Cherries from the old tree were sweet this year, and the pears were late.").encode()
    txt = b"First record of a fortune file.\n%\nSecond record, a little longer than the first.\n"
    jsonl = b"".join(json.dumps({"id": i, "body": f"line {i} of the shard"}).encode() + b"\n" for i in range(5))
    warc = _warc_record("http://example.org/a", html) + _warc_record("http://example.org/b", html.replace(b"pears", b"plums"))
    plain = {"html": ("p.html", html, {}), "txt": ("f.txt", txt, {"separator": "%"}), "jsonl": ("s.jsonl", jsonl, {"text_key": "body"})}
    plain["warc"] = ("c.warc", warc, {})
    for kind, (name, data, opts) in plain.items():
        (tmp_path / kind / "plain").mkdir(parents=True)
        (tmp_path / kind / "plain" / name).write_bytes(data)
        want = [d.text for d in _run(kind, tmp_path / kind / "plain", **opts)[0]]
        assert want, kind
        for ext, compress in _compressors().items():
            folder = tmp_path / kind / ext
            folder.mkdir()
            (folder / f"{name}.{ext}").write_bytes(compress(data))
            docs, stats = _run(kind, folder, **opts)
            assert [d.text for d in docs] == want, (kind, ext, stats)
            assert not any(k.startswith("bad_") for k in stats), (kind, ext, stats)


# ----------------------------------------------------------------------------- columnar and datasets


def test_parquet_text_column_in_batches(tmp_path):
    """A chosen text column and id column of Parquet files, read in batches across row groups; a
    null text is counted with its row, a file without the column is named."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 2500
    table = pa.table(
        {
            "doc": [f"doc-{i}" for i in range(n)],
            "content": [None if i == 7 else f"Document number {i} of the shard." for i in range(n)],
            "score": [float(i) for i in range(n)],
        }
    )
    pq.write_table(table, tmp_path / "part-0.parquet", row_group_size=1000)
    pq.write_table(pa.table({"other": ["x"]}), tmp_path / "part-1.parquet")
    docs, stats = _run("parquet", tmp_path, text_key="content", id_key="doc")
    assert len(docs) == n - 1
    assert docs[0].id == "src/doc-0" and docs[0].text == "Document number 0 of the shard."
    assert docs[-1].id == f"src/doc-{n - 1}"
    assert stats["bad_missing_text_field"] == 2  # row 7, and the file without the column
    (tmp_path / "part-2.parquet").write_bytes(b"PAR1" + bytes(100))  # not Parquet: counted, the others still read
    docs, stats = _run("parquet", tmp_path, text_key="content", id_key="doc")
    assert len(docs) == n - 1 and stats["bad_unreadable_file"] == 1


def test_hf_dataset_saved_to_disk(tmp_path):
    """``Dataset.save_to_disk`` and ``DatasetDict.save_to_disk`` folders: every row's text column,
    read from the .arrow files with pyarrow; ``include`` picks a split."""
    datasets = pytest.importorskip("datasets")  # only to write the folders: the reader needs pyarrow alone

    rows = {"story": [f"Once upon a time there was story {i}." for i in range(30)], "n": list(range(30))}
    ds = datasets.Dataset.from_dict(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "dict"))
    docs, stats = _run("hf_dataset", tmp_path / "one", text_key="story", id_key="n")
    assert [d.text for d in docs] == rows["story"] and docs[3].id == "src/3"
    assert not any(k.startswith("bad_") for k in stats)
    docs, _ = _run("hf_dataset", tmp_path / "dict", text_key="story")
    assert len(docs) == 35
    docs, _ = _run("hf_dataset", tmp_path / "dict", text_key="story", include=r"train/.*")
    assert len(docs) == 30
    docs, stats = _run("hf_dataset", tmp_path / "one")  # no column "text"
    assert docs == [] and stats["bad_missing_text_field"] == 1


# ----------------------------------------------------------------------------- Wikipedia

ARTICLE = """{{Short description|English mathematician}}
{{Infobox person
| name = Ada Lovelace
| birth_date = {{birth date|1815|12|10}}
}}
'''Augusta Ada King''' was an [[England|English]] [[mathematician]] and ''writer''.<ref name="a">{{cite book|title=Ada}}</ref> She wrote the first program.<ref name="b" />
[[File:Ada Lovelace portrait.jpg|thumb|A portrait of [[Ada Lovelace|Ada]] in 1840]]

== Early life ==
She was born in [[London]] and studied with [[Augustus De Morgan]]. See [https://example.org the archive].<!-- a hidden comment -->
{| class="wikitable"
|-
! Year !! Event
|-
| 1843 || Notes published
|}
* Notes on the [[Analytical Engine]] &amp; its programs

[[Category:English mathematicians]]
[[fr:Ada Lovelace]]"""

EXPECTED = """Augusta Ada King was an English mathematician and writer. She wrote the first program.

Early life
She was born in London and studied with Augustus De Morgan. See the archive.

Notes on the Analytical Engine & its programs"""


def _dump(pages: list[tuple[str, int, str, bool]]) -> str:
    def esc(s):
        return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    body = "".join(
        f"  <page>\n    <title>{esc(t)}</title>\n    <ns>{ns}</ns>\n    <id>{i + 1}</id>\n"
        + (f'    <redirect title="{esc(text[12:-2])}" />\n' if redirect else "")
        + f'    <revision>\n      <id>{100 + i}</id>\n      <text bytes="{len(text)}" xml:space="preserve">{esc(text)}</text>\n'
        "    </revision>\n  </page>\n"
        for i, (t, ns, text, redirect) in enumerate(pages)
    )
    return (
        '<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/" version="0.10" xml:lang="en">\n'
        "  <siteinfo><sitename>Wikipedia</sitename></siteinfo>\n" + body + "</mediawiki>\n"
    )


PAGES = [
    ("Ada Lovelace", 0, ARTICLE, False),
    ("Lovelace", 0, "#REDIRECT [[Ada Lovelace]]", True),
    ("Countess of Lovelace", 0, "#redirect [[Ada Lovelace]]", False),  # no <redirect/> element
    ("Talk:Ada Lovelace", 1, "This article is good. ~~~~", False),
    ("Category:Mathematicians", 14, "Mathematicians of every country.", False),
    ("Analytical Engine", 0, "The '''Analytical Engine''' was a [[machine]] designed by [[Charles Babbage|Babbage]].", False),
]


def test_wikipedia_dump_articles_as_plain_text(tmp_path):
    """Articles of a MediaWiki dump (.xml and .xml.bz2) as plain text: templates (nested),
    references (paired and self-closed), tables, files, categories and interlanguage links
    dropped; link labels, headings and list text kept; redirects and other namespaces skipped."""
    xml = _dump(PAGES)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "enwiki-pages-articles.xml").write_text(xml, encoding="utf-8")
    (tmp_path / "bz2").mkdir()
    (tmp_path / "bz2" / "enwiki-pages-articles.xml.bz2").write_bytes(bz2.compress(xml.encode()))
    for folder in ("plain", "bz2"):
        docs, stats = _run("wikipedia", tmp_path / folder)
        assert [d.metadata["title"] for d in docs] == ["Ada Lovelace", "Analytical Engine"]
        assert docs[0].text == EXPECTED
        assert docs[1].text == "The Analytical Engine was a machine designed by Babbage."
        assert docs[0].id == "src/1"
        assert stats["wiki_redirect"] == 2 and stats["wiki_other_namespace"] == 2
        assert not any(k.startswith("bad_") for k in stats)


def test_wikipedia_dump_is_streamed_and_a_broken_one_named(tmp_path):
    """The pages before a syntax error are yielded (the dump is parsed as it is read, never whole),
    and the error is counted as ``bad_xml`` with the line; the reader yields the first page
    before it reads the end of the file."""
    from llm.pipeline.readers import make_reader

    xml = _dump(PAGES)
    cut = xml.index("<page>", xml.index("Analytical Engine") - 200)
    (tmp_path / "broken.xml").write_text(xml[:cut] + "<page><title>Broken</tit></page>\n" + "x" * 100, encoding="utf-8")
    docs, stats = _run("wikipedia", tmp_path)
    assert [d.metadata["title"] for d in docs] == ["Ada Lovelace"]
    assert stats["bad_bad_xml"] == 1
    # streaming: a dump of 3,000 pages gives its first article before the parser reaches the end
    big = tmp_path / "big"
    big.mkdir()
    many = [("Ada Lovelace", 0, ARTICLE, False)] * 3000
    (big / "big.xml").write_text(_dump(many)[: -len("</mediawiki>\n")] + "<broken", encoding="utf-8")
    reader = make_reader({"name": "src", "kind": "wikipedia", "path": str(big)})
    it = reader.run()
    first = next(it)
    assert first.text == EXPECTED and "bad_bad_xml" not in _stats(reader)
    rest = list(it)
    assert len(rest) == 2999 and _stats(reader)["bad_bad_xml"] == 1


# ----------------------------------------------------------------------------- config


def test_config_accepts_the_new_kinds_and_checks_their_options(tmp_path):
    """``inputs[].kind`` takes parquet, hf_dataset and wikipedia; ``text_key`` belongs to the
    column kinds and ``namespaces`` to wikipedia only."""
    from llm.data.__main__ import load_config
    from llm.pipeline.config import PipelineConfigError

    base = [f"out={tmp_path}", "quality.enabled=false", "mixture.sources={}", "langid.sources={}", "heuristics.sources={}"]
    inputs = (
        "inputs=[{name: p, kind: parquet, path: /d, text_key: content}, {name: h, kind: hf_dataset, path: /d, text_key: story},"
        " {name: w, kind: wikipedia, path: /d, namespaces: [0, 4]}]"
    )
    cfg = load_config("python_docs", [*base, inputs])
    assert [i["kind"] for i in cfg["inputs"]] == ["parquet", "hf_dataset", "wikipedia"]
    assert cfg["inputs"][2]["namespaces"] == [0, 4]
    with pytest.raises(PipelineConfigError, match=r"text_key: only a jsonl or parquet or hf_dataset reader takes it"):
        load_config("python_docs", [*base, "inputs=[{name: w, kind: wikipedia, path: /d, text_key: x}]"])
    with pytest.raises(PipelineConfigError, match="namespaces"):
        load_config("python_docs", [*base, "inputs=[{name: p, kind: parquet, path: /d, namespaces: [0]}]"])
