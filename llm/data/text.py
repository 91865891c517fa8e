"""Reading raw text documents for tokenizer training and sharding.

A *source* is one of

* a ``.txt`` / ``.md`` / ``.rst`` file: the whole file is one document (UTF-8);
* a ``.jsonl`` file: one document per line, taken from a string field (``"text"`` by default);
* a directory: every file with one of the extensions above, recursively, in sorted path order
  (files with other extensions, and hidden files and directories such as ``.git``, are ignored);
* the string ``"builtin:python-docs"``: real English text that ships with CPython (the pydoc
  topic help plus the long docstrings of the top-level stdlib modules), so demos and tests need
  neither a data root nor the network.

Empty documents are skipped everywhere. Errors name the offending file (and line for JSONL).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

__all__ = [
    "BUILTIN_PYTHON_DOCS",
    "TEXT_EXTENSIONS",
    "JSONL_EXTENSIONS",
    "iter_documents",
    "builtin_python_docs",
    "source_files",
    "source_fingerprint",
]

BUILTIN_PYTHON_DOCS = "builtin:python-docs"
TEXT_EXTENSIONS = (".txt", ".md", ".rst")
JSONL_EXTENSIONS = (".jsonl",)
_KNOWN_EXTENSIONS = TEXT_EXTENSIONS + JSONL_EXTENSIONS

#: docstrings shorter than this (in characters, after ``inspect.cleandoc``) are not used
_MIN_DOCSTRING_CHARS = 200


# --------------------------------------------------------------------------------------------
# builtin:python-docs
# --------------------------------------------------------------------------------------------


def _docstrings_of(path: Path) -> list[str]:
    try:
        source = path.read_bytes()
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError, OSError):  # pragma: no cover - stdlib files always parse
        return []
    out = []
    for node in ast.walk(tree):  # breadth-first, deterministic
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc and len(doc) > _MIN_DOCSTRING_CHARS:
                out.append(doc)
    return out


@functools.lru_cache(maxsize=1)
def builtin_python_docs() -> tuple[str, ...]:
    """The documents of ``builtin:python-docs``, in a fixed order (cached; ~4 s the first time).

    Every value of ``pydoc_data.topics.topics`` (sorted by topic name), then every docstring
    longer than 200 characters of the modules, classes and functions defined in the top-level
    ``*.py`` files of the stdlib directory (files in sorted order, nodes in ``ast.walk`` order).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as e:  # pragma: no cover - some distros strip pydoc_data
        raise RuntimeError(
            f"{BUILTIN_PYTHON_DOCS} needs the stdlib module pydoc_data, which this Python ({sys.executable}) does not have"
        ) from e
    docs = [topics[k] for k in sorted(topics)]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.glob("*.py")):
        docs.extend(_docstrings_of(path))
    return tuple(d for d in docs if d)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def source_files(sources: Iterable[str]) -> list[str | Path]:
    """Expand ``sources`` into the ordered list of files (and builtin markers) to read.

    Raises FileNotFoundError for a missing path and ValueError for an explicitly named file
    whose extension is not one of .txt/.md/.rst/.jsonl.
    """
    if isinstance(sources, (str, os.PathLike)):
        raise TypeError(f"sources must be a list of paths, not a single {type(sources).__name__}")
    out: list[str | Path] = []
    for src in sources:
        if isinstance(src, str) and src == BUILTIN_PYTHON_DOCS:
            out.append(BUILTIN_PYTHON_DOCS)
            continue
        if isinstance(src, str) and src.startswith("builtin:"):
            raise ValueError(f"unknown builtin source {src!r}; the only one is {BUILTIN_PYTHON_DOCS!r}")
        path = Path(src)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in _KNOWN_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and p.is_file()
            )
            out.extend(found)
        elif path.is_file():
            if path.suffix.lower() not in _KNOWN_EXTENSIONS:
                raise ValueError(
                    f"{path}: unsupported file type {path.suffix!r}; expected one of "
                    f"{', '.join(_KNOWN_EXTENSIONS)} (or a directory, or {BUILTIN_PYTHON_DOCS!r})"
                )
            out.append(path)
        else:
            raise FileNotFoundError(f"text source not found: {path}")
    return out


def _read_text_file(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 (byte offset {e.start}: {e.reason})") from e


def _iter_jsonl(path: Path, text_field: str) -> Iterator[str]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 ({e.reason})") from e
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{where}: expected a JSON object with a {text_field!r} field, got {type(record).__name__}")
            if text_field not in record:
                raise ValueError(f"{where}: missing field {text_field!r} (fields present: {sorted(record)[:10]})")
            text = record[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{where}: field {text_field!r} must be a string, got {type(text).__name__}")
            if text:
                yield text


def iter_documents(sources: list[str], text_field: str = "text") -> Iterator[str]:
    """Yield the non-empty documents of ``sources`` in a deterministic order.

    The sources are expanded up front (so a missing path fails before anything is yielded);
    file contents are read lazily.
    """
    for item in source_files(sources):
        if item == BUILTIN_PYTHON_DOCS:
            yield from builtin_python_docs()
        elif item.suffix.lower() in JSONL_EXTENSIONS:
            yield from _iter_jsonl(item, text_field)
        else:
            text = _read_text_file(item)
            if text:
                yield text


def source_fingerprint(sources: list[str], text_field: str = "text") -> str:
    """A cheap fingerprint of what ``iter_documents(sources)`` would read.

    Hashes each file's resolved path, size and mtime (not its contents) and, for the builtin
    source, the Python version; used by :func:`llm.data.prepare.prepare_data` to decide whether
    its cache is still valid.
    """
    h = hashlib.sha256()
    h.update(f"text_field={text_field}\n".encode())
    for item in source_files(sources):
        if item == BUILTIN_PYTHON_DOCS:
            h.update(f"{BUILTIN_PYTHON_DOCS} {sys.version} {sysconfig.get_paths()['stdlib']}\n".encode())
        else:
            st = item.stat()
            h.update(f"{item.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()
