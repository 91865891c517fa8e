"""Readers: directories of .html/.htm, WARC files, .jsonl with a text field, plain .txt.

Every reader is a datatrove ``BaseDiskReader`` (its files are split over the tasks by datatrove),
tags documents with ``metadata["source"]`` (the input's name in the config) and ``format``
("html" or "text"), and never crashes on bad input: each problem is counted in the block's
stats under ``bad_<reason>`` and logged with the file (and line or byte offset); the run report
lists the counts. Reasons: ``empty_file``, ``undecodable`` (more than 10% of the characters
would be U+FFFD: dropped), ``decoded_with_replacement`` (kept), ``bad_json``,
``missing_text_field``, ``broken_warc_record``, ``unreadable_file``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from datatrove.data import Document
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.utils.logging import logger

from llm.pipeline.text import strip_ansi

_META_CHARSET = re.compile(rb"""<meta[^>]+charset=["']?([A-Za-z0-9_\-]+)""", re.I)
MAX_REPLACEMENT_FRACTION = 0.1


class _Reader(BaseDiskReader):
    """Shared decoding and bad-input accounting. ``fmt`` is the format of the documents."""

    fmt = "text"
    name = "reader"
    compression: str | None = None  # "infer": .gz/.zst files are decompressed while read

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

    def decode(self, raw: bytes, where: str, declared: str | None = None) -> str | None:
        for enc in filter(None, (declared, "utf-8")):
            try:
                return raw.decode(enc)
            except (UnicodeDecodeError, LookupError):
                continue
        text = raw.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        if bad > MAX_REPLACEMENT_FRACTION * max(1, len(text)):
            self.bad("undecodable", where, f"{bad} of {len(text)} characters are not UTF-8")
            return None
        self.bad("decoded_with_replacement", where, f"{bad} undecodable bytes replaced")
        return text

    def doc(self, text: str, doc_id: str, **meta) -> Document:
        return Document(text=text, id=doc_id, metadata={"source": self.source, "format": self.fmt, **meta})

    def read_file(self, filepath: str) -> Iterator[Document]:
        if not self.wanted(filepath):
            return
        try:
            with self.data_folder.open(filepath, "rb", compression=self.compression) as f:
                raw = f.read()
        except (OSError, EOFError) as e:
            self.bad("unreadable_file", filepath, str(e))
            return
        if not raw.strip():
            self.bad("empty_file", filepath)
            return
        yield from self.parse(raw, filepath)

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:  # pragma: no cover - abstract
        raise NotImplementedError


class HtmlDirReader(_Reader):
    """One document per .html/.htm file; the charset comes from a <meta> tag, else UTF-8."""

    fmt = "html"

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.htm*", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:
        m = _META_CHARSET.search(raw[:4096])
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
    """One document per line of .jsonl (optionally .gz/.zst); ``text_key`` names the text field."""

    compression = "infer"

    def __init__(self, data_folder: str, source: str, glob_pattern: str = "**/*.jsonl*", text_key: str = "text", id_key: str = "id", **kw):
        super().__init__(data_folder, source, glob_pattern=glob_pattern, **kw)
        self.text_field, self.id_field = text_key, id_key

    def parse(self, raw: bytes, filepath: str) -> Iterator[Document]:
        for lineno, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{filepath}:{lineno}"
            text = self.decode(line, where)
            if text is None:
                continue
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as e:
                self.bad("bad_json", where, f"{e.msg} at column {e.colno}")
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get(self.text_field), str):
                self.bad("missing_text_field", where, f"no string field {self.text_field!r}")
                continue
            doc_id = rec.get(self.id_field, f"{filepath}:{lineno}")
            meta = {k: v for k, v in rec.items() if k not in (self.text_field, self.id_field) and isinstance(v, (str, int, float, bool))}
            yield self.doc(rec[self.text_field], f"{self.source}/{doc_id}", path=where, **meta)


class WarcReader(_Reader):
    """HTML responses of WARC files (.warc or .warc.gz), read with fastwarc.

    A record without a body (truncated) or one fastwarc cannot parse is counted as
    ``broken_warc_record``; in an uncompressed file the reader resynchronises at the next
    ``WARC/1.`` header, so one broken record costs only itself."""

    fmt = "html"

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
                    m = re.search(r"charset=([A-Za-z0-9_\-]+)", ctype)
                    text = self.decode(body, f"{filepath}@{start + rec.stream_pos}", m.group(1) if m else None)
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


READERS = {"html": HtmlDirReader, "txt": TxtReader, "jsonl": JsonlTextReader, "warc": WarcReader}
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
