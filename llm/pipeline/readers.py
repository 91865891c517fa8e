"""Readers: directories of .html/.htm, WARC files, .jsonl with a text field, plain .txt, Parquet
files and Hugging Face ``datasets`` saved to disk (a text column), Wikipedia XML dumps.

Every reader is a datatrove ``BaseDiskReader`` (its files are split over the tasks by datatrove),
tags documents with ``metadata["source"]`` (the input's name in the config) and ``format``
("html" or "text"), and never crashes on bad input: each problem is counted in the block's
stats under ``bad_<reason>`` and logged with the file (and line or byte offset); the run report
lists the counts. Reasons: ``empty_file``, ``undecodable`` (more than 10% of the characters
would be U+FFFD: dropped), ``decoded_with_replacement`` (kept), ``bad_json``,
``missing_text_field``, ``broken_warc_record``, ``unreadable_file``, ``bad_xml``.

Compression is chosen by the file name: ``.gz``, ``.bz2``, ``.xz`` and ``.zst`` (the ``zstandard``
package, in the ``data`` extra) are decompressed
while read, for every kind but Parquet and ``hf_dataset`` (compressed inside).

Text whose charset is not declared (HTTP ``Content-Type`` of a WARC record, ``<meta charset>``,
a byte-order mark) and is not UTF-8 is decoded with the charset that ``charset_normalizer``
detects (GBK, Big5, Shift-JIS, cp1252, ...); between single-byte charsets it cannot tell apart,
cp1252 (the web's default) wins.
"""

from __future__ import annotations

import bz2
import codecs
import contextlib
import gzip
import io
import json
import lzma
import re
from collections.abc import Iterator
from typing import IO

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from llm.pipeline.text import strip_ansi

_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)
_XML_ENCODING = re.compile(rb"""^\s*<\?xml[^>]+encoding=["']([A-Za-z0-9_\-]+)""")
MAX_REPLACEMENT_FRACTION = 0.1
# labels decoded as the browsers' superset (WHATWG Encoding Standard): a page labelled gb2312
# is written in GBK, one labelled iso-8859-1 in cp1252, one labelled shift_jis in cp932
_SUPERSET = {
    **dict.fromkeys(("gb2312", "gbk", "x-gbk", "gb_2312-80", "csgb2312", "chinese"), "gb18030"),
    **dict.fromkeys(("iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "us-ascii", "ascii", "windows-1252"), "cp1252"),
    **dict.fromkeys(("shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "windows-31j"), "cp932"),
    **dict.fromkeys(("big5", "big5-hkscs", "x-x-big5", "cn-big5"), "big5hkscs"),
    **dict.fromkeys(("euc-kr", "ks_c_5601-1987", "korean"), "cp949"),
}
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_DECOMPRESS = {".gz": "gzip", ".bz2": "bz2", ".xz": "xz", ".zst": "zstd"}


def compression_of(filepath: str) -> str | None:
    """The compression a file's name says (``.gz``, ``.bz2``, ``.xz``, ``.zst``), else ``None``."""
    for ext, comp in _DECOMPRESS.items():
        if filepath.lower().endswith(ext):
            return comp
    return None


def decompressed(f: IO[bytes], compression: str | None) -> IO[bytes]:
    """A stream of ``f`` decompressed while read (nothing held whole in memory)."""
    if compression == "gzip":
        return gzip.GzipFile(fileobj=f)
    if compression == "bz2":
        return bz2.BZ2File(f)
    if compression == "xz":
        return lzma.LZMAFile(f)
    if compression == "zstd":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(f))  # its reader has no readline
    return f


def detect_charset(raw: bytes) -> str | None:
    """The charset of undeclared, non-UTF-8 bytes as ``charset_normalizer`` judges it (the least
    chaotic, most coherent decoding); cp1252 when it ties with another single-byte charset
    (short Western text reads the same in cp1250, cp1257, ...). ``None``: no decoding fits."""
    from charset_normalizer import from_bytes

    matches = list(from_bytes(raw))
    if not matches:
        return None
    best = min(matches, key=lambda m: (m.chaos, -m.coherence))
    tied = {m.encoding for m in matches if m.chaos <= best.chaos + 0.01 and m.coherence >= best.coherence - 0.01}
    return "cp1252" if "cp1252" in tied else best.encoding


class _Reader(BaseDiskReader):
    """Shared decoding and bad-input accounting. ``fmt`` is the format of the documents."""

    fmt = "text"
    name = "reader"

    def __init__(
        self, data_folder: str, source: str, glob_pattern: str | None = None, include: str | None = None, exclude: str | None = None, **kw
    ):
        super().__init__(data_folder, glob_pattern=glob_pattern, text_key="text", id_key="id", **kw)
        self.source = source
        # regexes on the path relative to data_folder (fullmatch), to pick files a glob cannot
        self.include = re.compile(include) if include else None
        self.exclude = re.compile(exclude) if exclude else None

    def wanted(self, filepath: str) -> bool:
        return (self.include is None or bool(self.include.fullmatch(filepath))) and not (
            self.exclude is not None and self.exclude.fullmatch(filepath)
        )

    def bad(self, reason: str, where: str, detail: str = "") -> None:
        self.stat_update(f"bad_{reason}")
        logger.warning(f"[{self.source}] {reason}: {where}{': ' + detail if detail else ''}")

    def decode(self, raw: bytes, where: str, declared: str | None = None, detect: bool = True) -> str | None:
        """``raw`` as text: a byte-order mark, else the ``declared`` charset (as the browsers'
        superset), else UTF-8, else (``detect``) the detected charset; else UTF-8 with
        replacement characters, dropped when more than 10% of them are."""
        bom = next((enc for mark, enc in _BOMS if raw.startswith(mark)), None)
        declared = _SUPERSET.get(declared.lower(), declared) if declared else None
        for enc in filter(None, (bom, declared, "utf-8")):
            try:
                return raw.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
        if detect and (enc := detect_charset(raw)):
            try:
                text = raw.decode(enc)
            except (UnicodeDecodeError, LookupError):
                pass
            else:
                self.stat_update(f"charset_detected_{enc}")
                return text
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad > MAX_REPLACEMENT_FRACTION * max(1, len(text)):
            self.bad("undecodable", where, f"{bad} of {len(text)} characters are not UTF-8")
            return None
        self.bad("decoded_with_replacement", where, f"{bad} undecodable bytes replaced")
        return text

    def doc(self, text: str, doc_id: str, **meta) -> Document:
        return Document(text=text, id=doc_id, metadata={"source": self.source, "format": self.fmt, **meta})

    keep_gzip = False  # True: .gz files are read as they are (the WARC reader salvages a truncated one)

    @contextlib.contextmanager
    def open(self, filepath: str) -> Iterator[IO[bytes]]:
        """The file, decompressed while read as its name says (``.gz``, ``.bz2``, ``.xz``, ``.zst``)."""
        comp = compression_of(filepath)
        with self.data_folder.open(filepath, "rb") as f:
            d = decompressed(f, None if comp == "gzip" and self.keep_gzip else comp)
            try:
                yield d
            finally:
                if d is not f:
                    d.close()

    def read_file(self, filepath: str) -> Iterator[Document]:
        if not self.wanted(filepath):
            return
        try:
            with self.open(filepath) as f:
                raw = f.read()
        except (OSError, EOFError, lzma.LZMAError) as e:
            self.bad("unreadable_file", filepath, str(e))
            return
        if not raw.strip():
            self.bad("empty_file", filepath)
            return
        yield from self.parse(raw, filepath)

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:  # pragma: no cover - abstract
        raise NotImplementedError


class HtmlDirReader(_Reader):
    """One document per .html/.htm file (``.html.gz`` ... too); the charset comes from a byte-order
    mark or a <meta> tag (or an XML declaration), else UTF-8, else it is detected."""

    fmt = "html"

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.htm*", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:
        m = _META_CHARSET.search(raw[:4096]) or _XML_ENCODING.search(raw[:256])
        text = self.decode(raw, filepath, m.group(1).decode("ascii", "ignore") if m else None)
        if text is not None:
            yield self.doc(text, f"{self.source}/{filepath}", path=filepath)


class TxtReader(_Reader):
    """Plain text: one document per file, or per record when ``separator`` is set (a line that
    equals it ends a record, e.g. "%" in fortune files). ANSI colour codes are removed."""

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*", separator: str | None = None, min_chars: int = 1, **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)
        self.separator = separator
        self.min_chars = min_chars

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:
        if b"\0" in raw[:8192]:
            self.bad("unreadable_file", filepath, "binary file (NUL bytes)")
            return
        text = self.decode(raw, filepath)
        if text is None:
            return
        text = strip_ansi(text)
        if self.separator is None:
            yield self.doc(text.strip(), f"{self.source}/{filepath}", path=filepath)
            return
        record: list[str] = []
        n = 0
        for line in text.splitlines() + [self.separator]:
            if line.strip() == self.separator:
                body = "\n".join(record).strip()
                record = []
                if len(body) >= self.min_chars:
                    yield self.doc(body, f"{self.source}/{filepath}#{n}", path=filepath)
                    n += 1
            else:
                record.append(line.rstrip())


class JsonlTextReader(_Reader):
    """One document per line of .jsonl (.gz/.bz2/.xz/.zst too), read line by line; ``text_key``
    names the text field, ``id_key`` the id field. Lines are UTF-8 (RFC 8259)."""

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.jsonl*", text_key: str = "text", id_key: str = "id", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)
        self.text_field, self.id_field = text_key, id_key

    def read_file(self, filepath: str) -> Iterator[Document]:
        if not self.wanted(filepath):
            return
        lineno, blank = 0, True
        try:
            with self.open(filepath) as f:
                for lineno, line in enumerate(f, start=1):
                    if line.strip():
                        blank = False
                        yield from self.parse_line(line, f"{filepath}:{lineno}", lineno, filepath)
        except (OSError, EOFError, lzma.LZMAError) as e:
            self.bad("unreadable_file", f"{filepath}:{lineno + 1}" if lineno else filepath, str(e))
            return
        if blank:
            self.bad("empty_file", filepath)

    def parse_line(self, line: bytes, where: str, lineno: int, filepath: str) -> Iterator[Document]:
        text = self.decode(line, where, detect=False)
        if text is None:
            return
        try:
            rec = json.loads(text)
        except json.JSONDecodeError as e:
            self.bad("bad_json", where, f"{e.msg} at column {e.colno}")
            return
        if not isinstance(rec, dict) or not isinstance(rec.get(self.text_field), str):
            self.bad("missing_text_field", where, f"no string field {self.text_field!r}")
            return
        doc_id = rec.get(self.id_field, f"{filepath}:{lineno}")
        meta = {k: v for k, v in rec.items() if k not in (self.text_field, self.id_field) and isinstance(v, (str, int, float, bool))}
        yield self.doc(rec[self.text_field], f"{self.source}/{doc_id}", path=where, **meta)


class WarcReader(_Reader):
    """HTML responses of WARC files (.warc or .warc.gz), read with fastwarc. The charset is the
    HTTP ``Content-Type``'s, else the page's <meta>, else UTF-8, else detected.

    A record without a body (truncated) or one fastwarc cannot parse is counted as
    ``broken_warc_record``; in an uncompressed file the reader resynchronises at the next
    ``WARC/1.`` header, so one broken record costs only itself. A .warc.gz that is truncated
    keeps the records before the cut; .bz2/.xz/.zst are decompressed while read."""

    fmt = "html"
    keep_gzip = True

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.warc*", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:
        import gzip
        import io

        from fastwarc.warc import ArchiveIterator, WarcRecordType

        if raw[:2] == b"\x1f\x8b":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError) as e:  # truncated gzip: keep what decompresses
                self.bad("broken_warc_record", filepath, f"gzip: {e}")
                d = gzip.GzipFile(fileobj=io.BytesIO(raw))
                chunks = []
                try:
                    while chunk := d.read(1 << 20):
                        chunks.append(chunk)
                except (OSError, EOFError):
                    pass
                raw = b"".join(chunks)
        pos = 0
        n = 0
        just_counted = False  # a broken record often makes the next header unparsable: count it once
        while pos < len(raw):
            start = pos
            try:
                for rec in ArchiveIterator(io.BytesIO(raw[start:]), record_types=WarcRecordType.response, parse_http=True):
                    pos = start + rec.stream_pos + 1
                    uri = rec.headers.get("WARC-Target-URI")
                    body = rec.reader.read()
                    if not uri or not body:
                        just_counted = True
                        self.bad(
                            "broken_warc_record",
                            f"{filepath}@{start + rec.stream_pos}",
                            "no target URI" if not uri else "empty or truncated body",
                        )
                        continue
                    just_counted = False
                    ctype = (rec.http_headers.get("Content-Type") or "") if rec.http_headers else ""
                    if ctype and "html" not in ctype.lower():
                        continue
                    m = re.search(r"charset=([A-Za-z0-9_\-]+)", ctype) or _META_CHARSET.search(body[:4096])
                    declared = m.group(1) if m else None
                    if isinstance(declared, bytes):
                        declared = declared.decode("ascii", "ignore")
                    text = self.decode(body, f"{filepath}@{start + rec.stream_pos}", declared)
                    if text is None:
                        continue
                    rid = rec.headers.get("WARC-Record-ID") or f"{filepath}#{n}"
                    n += 1
                    yield self.doc(text, f"{self.source}/{rid.strip('<>')}", url=uri, path=filepath)
                break
            except OSError as e:
                if not just_counted:
                    self.bad("broken_warc_record", f"{filepath}@{pos}", str(e))
                just_counted = False
                nxt = raw.find(b"WARC/1.", pos + 1)
                if nxt < 0:
                    break
                pos = nxt


class _ColumnReader(_Reader):
    """Rows of Arrow data in batches (never a whole file in memory): the string column
    ``text_key`` is the text, ``id_key`` the id (else ``<file>:<row>``)."""

    batch_size = 1024

    def __init__(self, data_folder: str, source: str, glob_pattern: str, text_key: str = "text", id_key: str = "id", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)
        self.text_field, self.id_field = text_key, id_key

    def batches(self, f: IO[bytes], filepath: str) -> Iterator:  # pragma: no cover - abstract
        raise NotImplementedError

    def columns(self, names: list[str], filepath: str) -> list[str] | None:
        if self.text_field not in names:
            self.bad("missing_text_field", filepath, f"no column {self.text_field!r} (columns: {', '.join(names)})")
            return None
        return [self.text_field] + ([self.id_field] if self.id_field in names else [])

    def read_file(self, filepath: str) -> Iterator[Document]:
        if not self.wanted(filepath):
            return
        row = 0
        try:
            with self.data_folder.open(filepath, "rb") as f:
                for batch in self.batches(f, filepath):
                    texts = batch.column(self.text_field).to_pylist()
                    ids = batch.column(self.id_field).to_pylist() if self.id_field in batch.schema.names else [None] * len(texts)
                    for text, doc_id in zip(texts, ids):
                        where = f"{filepath}:{row}"
                        if not isinstance(text, str):
                            self.bad(
                                "missing_text_field", where, f"{self.text_field!r} is {'null' if text is None else type(text).__name__}"
                            )
                        else:
                            yield self.doc(text, f"{self.source}/{where if doc_id is None else doc_id}", path=where)
                        row += 1
        except (OSError, EOFError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            self.bad("unreadable_file", f"{filepath}:{row}" if row else filepath, str(e).splitlines()[0] if str(e) else type(e).__name__)
            return
        if row == 0:
            self.bad("empty_file", filepath)


class ParquetReader(_ColumnReader):
    """Parquet files (e.g. a Hugging Face dataset's ``to_parquet`` shards), read in row batches
    of only the text and id columns."""

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.parquet", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)

    def batches(self, f: IO[bytes], filepath: str) -> Iterator:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(f)
        cols = self.columns(pf.schema_arrow.names, filepath)
        if cols is not None:
            yield from pf.iter_batches(batch_size=self.batch_size, columns=cols)


class HfDatasetReader(_ColumnReader):
    """A Hugging Face dataset saved with ``Dataset.save_to_disk`` (or a ``DatasetDict``: every
    split; pick some with ``include``): its ``*.arrow`` files (Arrow IPC streams), read record
    batch by record batch with pyarrow; the ``datasets`` package is not needed."""

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.arrow", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)

    def batches(self, f: IO[bytes], filepath: str) -> Iterator:
        import pyarrow as pa

        head = f.read(6)
        f.seek(0)
        reader = pa.ipc.open_file(f) if head == b"ARROW1" else pa.ipc.open_stream(f)
        if self.columns(reader.schema.names, filepath) is None:
            return
        if head == b"ARROW1":
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
        else:
            yield from reader


class WikipediaReader(_Reader):
    """A MediaWiki XML dump (``pages-articles.xml``, ``.xml.bz2``, ...), streamed page by page
    with lxml's ``iterparse`` (each page freed once read): articles only (namespace 0, or the
    namespaces in ``namespaces``), redirects skipped (counted ``wiki_redirect`` /
    ``wiki_other_namespace``), the wikitext converted to plain text by :func:`wikitext_to_text`.
    A dump that stops parsing is counted ``bad_xml`` with its line; the pages before stay."""

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.xml*", namespaces: tuple[int, ...] = (0,), **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)
        self.namespaces = {str(n) for n in namespaces}

    def read_file(self, filepath: str) -> Iterator[Document]:
        from lxml import etree

        if not self.wanted(filepath):
            return
        pages = 0
        try:
            with self.open(filepath) as f:
                it = etree.iterparse(f, events=("end",), resolve_entities=False, no_network=True, huge_tree=True, remove_comments=True)
                for _, el in it:
                    if etree.QName(el).localname != "page":
                        continue
                    pages += 1
                    yield from self.page(el, filepath)
                    el.clear(keep_tail=False)
                    while el.getprevious() is not None:  # the pages already read
                        del el.getparent()[0]
        except etree.XMLSyntaxError as e:
            line = e.position[0] if e.position else "?"
            self.bad("bad_xml", f"{filepath}:{line}", f"{e.msg} (after {pages} pages)")
            return
        except (OSError, EOFError, lzma.LZMAError) as e:
            self.bad("unreadable_file", filepath, f"{e} (after {pages} pages)")
            return
        if pages == 0:
            self.bad("empty_file", filepath, "no <page> element")

    def page(self, el, filepath: str) -> Iterator[Document]:
        def child(node, name):
            return next((c for c in node if isinstance(c.tag, str) and c.tag.rsplit("}", 1)[-1] == name), None)

        def text_of(node, name):
            c = child(node, name) if node is not None else None
            return c.text if c is not None and c.text is not None else None

        title, ns, page_id = text_of(el, "title") or "", text_of(el, "ns") or "0", text_of(el, "id")
        if ns not in self.namespaces:
            self.stat_update("wiki_other_namespace")
            return
        revision = child(el, "revision")
        wikitext = text_of(revision, "text")
        if child(el, "redirect") is not None or (wikitext and _REDIRECT.match(wikitext)):
            self.stat_update("wiki_redirect")
            return
        where = f"{filepath}:{el.sourceline} (page {title!r})"
        if wikitext is None:
            self.bad("missing_text_field", where, "no <revision><text>")
            return
        text = wikitext_to_text(wikitext)
        if not text.strip():
            self.stat_update("wiki_empty_article")
            return
        yield self.doc(text, f"{self.source}/{page_id or title}", path=f"{filepath}:{el.sourceline}", title=title)


# --------------------------------------------------------------------------- wikitext to plain text

_REDIRECT = re.compile(r"\s*#redirect", re.I)
_DROPPED_TAGS = "ref|gallery|math|timeline|imagemap|score|graph|templatedata|references|noinclude|chem|ce|hiero|mapframe"
_DROP_ELEMENTS = re.compile(rf"<({_DROPPED_TAGS})\b[^>]*?/>|<({_DROPPED_TAGS})\b[^>]*>.*?</\2\s*>", re.I | re.S)
_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
_NOWIKI = re.compile(r"<nowiki\s*/>|</?nowiki>", re.I)
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*\b[^<>]*?/?>")
_BR = re.compile(r"<br\s*/?>", re.I)
_EXTERNAL = re.compile(r"\[(?:https?:|ftp:)?//[^\s\]]+(?:\s+([^\]]*))?\]")
_BOLD_ITALIC = re.compile(r"'{2,5}")
_HEADING = re.compile(r"^(={1,6})\s*(.*?)\s*\1\s*$", re.M)
_LIST = re.compile(r"^[*#:;]+\s*", re.M)
_MAGIC = re.compile(r"__[A-Z]+__")
_DROPPED_LINKS = re.compile(r"\s*(?i:file|image|category|media)\s*:|\s*[a-z]{2,3}(-[a-z]+)?:")  # the latter: interlanguage


def _balanced(text: str, open_: str, close: str, keep) -> str:
    """``text`` with every balanced ``open_ ... close`` span (nested ones inside) replaced by
    ``keep(inner)``; an unclosed opener is dropped with the rest of its line."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = text.find(open_, i)
        if j < 0:
            out.append(text[i:])
            break
        out.append(text[i:j])
        depth, k = 1, j + len(open_)
        while k < n and depth:
            if text.startswith(open_, k):
                depth, k = depth + 1, k + len(open_)
            elif text.startswith(close, k):
                depth, k = depth - 1, k + len(close)
            else:
                k += 1
        if depth:  # unclosed: drop to the end of the line
            eol = text.find("\n", j)
            i = n if eol < 0 else eol
            continue
        out.append(keep(text[j + len(open_) : k - len(close)]))
        i = k
    return "".join(out)


def _link(inner: str) -> str:
    """``[[target|label]]`` -> label, ``[[target]]`` -> target; files, images, categories and
    interlanguage links -> nothing."""
    if _DROPPED_LINKS.match(inner):
        return ""
    target, pipe, label = _balanced(inner, "[[", "]]", _link).partition("|")
    return (label if pipe and label.strip() else target).strip()


def wikitext_to_text(wikitext: str) -> str:
    """Plain text of an article's wikitext, as the usual extractors (WikiExtractor, the
    ``wikipedia`` dataset) make it: comments, ``<ref>`` notes (paired or ``<ref/>``), galleries
    and math dropped; templates ``{{...}}`` (nested) and tables ``{|...|}`` dropped; file, image,
    category and interlanguage links dropped; ``[[target|label]]`` -> label and ``[[target]]`` ->
    target; ``[url label]`` -> label; headings kept as their text on their own line; bold/italic
    quotes, list markers, other tags (their content kept) and magic words removed; entities
    decoded; runs of blank lines collapsed."""
    import html

    t = _COMMENT.sub("", wikitext)
    t = _DROP_ELEMENTS.sub("", t)
    t = _balanced(t, "{{", "}}", lambda inner: "")
    t = _balanced(t, "{|", "|}", lambda inner: "")
    t = _balanced(t, "[[", "]]", _link)
    t = _EXTERNAL.sub(lambda m: m.group(1) or "", t)
    t = _BR.sub("\n", t)
    t = _NOWIKI.sub("", t)
    t = _TAG.sub("", t)
    t = _BOLD_ITALIC.sub("", t)
    t = _HEADING.sub(lambda m: m.group(2), t)
    t = _LIST.sub("", t)
    t = _MAGIC.sub("", t)
    t = html.unescape(t).replace("\u00a0", " ")
    lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in t.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


READERS = {
    "html": HtmlDirReader,
    "txt": TxtReader,
    "jsonl": JsonlTextReader,
    "warc": WarcReader,
    "parquet": ParquetReader,
    "hf_dataset": HfDatasetReader,
    "wikipedia": WikipediaReader,
}
SPEC_KEYS = ("name", "kind", "path", "glob")


def make_reader(spec: dict, ignore: tuple[str, ...] = ()) -> _Reader:
    """A reader from a config entry ``{name, kind, path, glob?, <reader options>}``; keys in
    ``ignore`` belong to the caller."""
    kind = spec["kind"]
    if kind not in READERS:
        raise ValueError(f"inputs[{spec.get('name')}].kind must be one of {sorted(READERS)}, got {kind!r}")
    kw = {k: v for k, v in spec.items() if k not in SPEC_KEYS + ignore}
    if spec.get("glob"):
        kw["glob_pattern"] = spec["glob"]
    return READERS[kind](spec["path"], spec.get("name", kind), **kw)
