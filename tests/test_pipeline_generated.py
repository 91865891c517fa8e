"""The whole stage-1 pipeline on a corpus this test writes itself, so the suite never skips the
pipeline (tests/test_pipeline.py needs Debian's python3.11-doc): HTML pages made of the
repository's own documentation (real prose) inside a site's chrome (banner, menu, footer), one of
them gzipped, one in cp1252 without a declared charset, one an exact copy, one empty; a gzipped
WARC file written with fastwarc; a bz2 jsonl shard with its text in a chosen field. The run uses
only what ``pip install -e .[data]`` (launch/setup.sh) installs."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.tier("integration")  # the pipeline in process, a few seconds

FOOTER = "© 2024 The Example Documentation Project · All rights reserved · Contact the documentation team"
CP1252 = "After the talk we had a café crème and a crème brûlée at the corner, where the naïve questions continued for an hour."


def _sections() -> list[tuple[str, str]]:
    """(title, prose) of the sections of docs/*.md: code blocks, tables and markup removed."""
    out = []
    for md in sorted((ROOT / "docs").glob("*.md")):
        text = re.sub(r"```.*?```", "", md.read_text(encoding="utf-8"), flags=re.S)
        for sec in re.split(r"\n###? ", text)[1:]:
            title, _, body = sec.partition("\n")
            paras = []
            for p in body.split("\n\n"):
                p = " ".join(ln.strip() for ln in p.splitlines() if ln.strip() and not ln.lstrip().startswith(("|", "#", "-", "*", ">")))
                p = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", p).replace("`", "")
                if len(p) > 120:
                    paras.append(p)
            if sum(map(len, paras)) > 400:
                out.append((title.strip(), "\n\n".join(paras)))
    return out


def _page(title: str, prose: str, charset: str | None = "utf-8") -> str:
    meta = f'<meta charset="{charset}">' if charset else ""
    paras = "".join(f"<p>{p}</p>\n" for p in prose.split("\n\n"))
    return (
        f"<html><head>{meta}<title>{title}</title></head><body>\n"
        '<header><div class="banner">Example Docs</div><ul><li><a href="/">Home</a></li><li><a href="/guide">Guide</a></li></ul></header>\n'
        '<nav><a href="/">Home</a> | <a href="/api">API</a> | <a href="/faq">FAQ</a></nav>\n'
        f"<main><h1>{title}</h1>\n{paras}</main>\n<footer><p>{FOOTER}</p></footer></body></html>"
    )


def _warc(records: list[tuple[str, bytes, str]]) -> bytes:
    """A .warc.gz (one gzip member per record, as crawlers write them) made with fastwarc."""
    from fastwarc.warc import WarcRecord, WarcRecordType

    out = b""
    for i, (uri, body, ctype) in enumerate(records):
        rec = WarcRecord()
        rec.init_headers(WarcRecordType.response, record_urn=f"uuid:00000000-0000-0000-0000-{i:012d}".encode())
        rec.headers["WARC-Target-URI"] = uri
        rec.headers["Content-Type"] = "application/http; msgtype=response"
        rec.set_bytes_content(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n\r\n".encode() + body)
        buf = io.BytesIO()
        rec.write(buf)
        out += gzip.compress(buf.getvalue())
    return out


def _docs(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh)
    return rows


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from llm.data.__main__ import load_config
    from llm.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("generated")
    sections = _sections()
    assert len(sections) >= 30, "docs/*.md should give enough prose sections"
    site, crawl, notes, reference = sections[:20], sections[20:24], sections[24:30], sections[30:]
    html = root / "corpus/html"
    html.mkdir(parents=True)
    for i, (title, prose) in enumerate(site):
        data = _page(title, prose).encode("utf-8")
        if i == 1:
            (html / f"page{i:02d}.html.gz").write_bytes(gzip.compress(data))
        else:
            (html / f"page{i:02d}.html").write_bytes(data)
    (html / "copy00.html").write_text(_page(*site[0]).replace("<p>", "<p>\n   "), encoding="utf-8")  # white space changed
    (html / "cafe.html").write_bytes(_page("Notes from the conference", CP1252 + "\n\n" + site[2][1], charset=None).encode("cp1252"))
    (html / "empty.html").write_bytes(b"")
    warc = root / "corpus/warc"
    warc.mkdir()
    records = [(f"http://docs.example.org/{i}", _page(t, p).encode(), "text/html; charset=utf-8") for i, (t, p) in enumerate(crawl)]
    records.insert(2, ("http://docs.example.org/logo.png", b"\x89PNG\r\n\x1a\n" + bytes(64), "image/png"))
    (warc / "crawl-00000.warc.gz").write_bytes(_warc(records))
    (root / "corpus/notes").mkdir()
    lines = [json.dumps({"key": f"note-{i}", "content": f"{t}\n\n{p}"}, ensure_ascii=False) for i, (t, p) in enumerate(notes)]
    (root / "corpus/notes/notes-00000.jsonl.bz2").write_bytes(bz2.compress(("\n".join(lines) + "\n").encode()))
    (root / "reference").mkdir()
    for i, (_, p) in enumerate(reference):
        (root / "reference" / f"ref{i:02d}.txt").write_text(p, encoding="utf-8")
    config = root / "generated.yaml"
    config.write_text(
        f"""defaults:
  - base
  - _self_
name: generated
out: {root}/out
inputs:
  - {{name: site, kind: html, path: {html}}}
  - {{name: crawl, kind: warc, path: {warc}}}
  - {{name: notes, kind: jsonl, path: {root}/corpus/notes, text_key: content, id_key: key}}
harmful:
  classifier_languages: [en]
quality:
  train:
    positive:
      - {{name: reference, kind: txt, path: {root}/reference, glob: "*.txt"}}
    negative_sources: [site]
  keep: {{threshold: 0.0}}
mixture:
  vocab_size: 512
executor:
  tasks: 2
  workers: 1
"""
    )
    cfg = load_config(str(config), [])
    report = run_pipeline(cfg)
    return {"root": root, "report": report, "work": root / "out/work", "site": site, "crawl": crawl, "notes": notes}


def test_every_source_reaches_the_shards(run):
    final = _docs(run["work"] / "final")
    by_source = {s: [d for d in final if d["metadata"]["source"] == s] for s in ("site", "crawl", "notes")}
    assert all(by_source.values()), {s: len(v) for s, v in by_source.items()}
    assert {d["metadata"]["url"] for d in by_source["crawl"]} <= {f"http://docs.example.org/{i}" for i in range(4)}
    assert {d["id"] for d in by_source["notes"]} <= {f"notes/note-{i}" for i in range(6)}
    manifest = json.loads((run["root"] / "out/shards/manifest.json").read_text())
    assert manifest["totals"]["tokens"] > 1000
    assert run["report"]["kept_documents"] == len(final)


def test_readers_decompress_and_detect_the_charset(run):
    extracted = {d["id"]: d["text"] for d in _docs(run["work"] / "extracted")}
    assert "site/page01.html.gz" in extracted  # a gzipped page is a page, not bad input
    assert CP1252 in extracted["site/cafe.html"]  # undeclared cp1252: no mojibake
    assert run["report"]["bad_input"] == {"reader:empty_file": 1}


def test_chrome_removed_prose_kept_duplicate_dropped(run):
    final = {d["id"]: d["text"] for d in _docs(run["work"] / "final")}
    site = [t for i, t in final.items() if i.startswith("site/")]
    assert site and not any(FOOTER in t or "Example Docs" in t for t in site)
    first = run["site"][3][1].split("\n\n")[0]
    assert any(first[:100] in t for t in site)
    removed = {d["id"] for d in _docs(run["work"] / "removed/exact_dedup")}
    assert len(removed & {"site/page00.html", "site/copy00.html"}) == 1
