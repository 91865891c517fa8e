"""Texts the pipeline tests generate their inputs from, needing no Debian package: English prose
from this repository's own documentation (docs/*.md, README.md), a few paragraphs of clean
Chinese technical prose, HTML pages that wrap them in a site's navigation, and link-list pages
(an index of this repository's functions, a "List of Tables" of its headings).

Import from a test module with ``from pipeline_texts import ...`` (``tests/`` is on ``sys.path``)."""

from __future__ import annotations

import html
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: clean Chinese technical prose (hand-written for these tests; no repeated phrases)
ZH = [
    "数据清洗流程先把网页转换成纯文本，再识别每篇文档的语言。中文和英文使用不同的规则："
    "英文按空格切分单词，中文则以汉字为单位统计。去重分为两步，第一步比较归一化之后的全文哈希，"
    "找出完全相同的副本；第二步用最小哈希和局部敏感哈希寻找内容几乎相同的页面，只保留其中一篇。"
    "最后，质量分类器给每篇文档打分，分数过低的文档不会进入训练数据。",
    "训练一个语言模型之前，需要准备大量干净的文本。网络上抓取的页面常常夹杂着导航栏、版权声明、"
    "广告和评论区，这些内容对模型没有帮助，反而会让它学会重复无意义的套话。因此，提取正文时要删掉"
    "页眉页脚和侧边栏，保留标题、段落、列表和表格，并记录每一步删除了多少内容，方便日后检查。",
    "分词器把文本切成模型能够处理的词元。对于中文，常见做法是在字节级别上训练一个字节对编码词表，"
    "让高频的词语合并成一个词元，而生僻字仍然可以拆成若干字节表示。词表太小会让序列变长，训练变慢；"
    "词表太大则会占用更多显存，而且很多词元出现的次数太少，学不到可靠的向量。",
    "评估模型时，困惑度衡量它对留出文本的预测能力，数值越低越好。除此之外，还可以用选择题、"
    "阅读理解和代码生成等任务检验模型是否真正掌握了知识。每次比较两个模型，都应该使用同一份评测数据、"
    "同样的提示模板和相同的随机种子，否则得到的差异可能只是偶然。",
    "分布式训练把一个批次拆给多张显卡同时计算，再把梯度汇总起来。当模型参数多到一张卡放不下时，"
    "可以把参数、梯度和优化器状态切成若干份，分别存放在不同的设备上。检查点要定期写入磁盘，"
    "这样即使某台机器中途断电，任务也能从最近一次保存的位置继续，而不必从头开始。",
]


def prose_sections(min_chars: int = 300) -> list[tuple[str, str]]:
    """(title, text) of the repository's documentation, one per ``##`` section or paragraph
    group: real English prose, markdown tables, code blocks and lists left out."""
    out = []
    for f in sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]:
        text = re.sub(r"```.*?```", "", f.read_text(encoding="utf-8"), flags=re.S)
        for sec in re.split(r"\n#+ ", "\n" + text):
            title, _, body = sec.partition("\n")
            paras = [
                re.sub(r"\s+", " ", re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", p)).strip()
                for p in body.split("\n\n")
                if p.strip() and not p.lstrip().startswith(("|", "-", "<", "!", ">"))
            ]
            paras = [p for p in paras if len(p) >= 80]
            for i in range(0, len(paras), 3):
                chunk = "\n\n".join(paras[i : i + 3])
                if len(chunk) >= min_chars:
                    out.append((title.strip() or f.stem, chunk))
    return out


NAV = ["Home", "Documentation", "Download", "Community", "Blog", "About us", "Contact"]


def page(title: str, text: str, nav: bool = True) -> str:
    """An HTML page of ``text`` (paragraphs split on blank lines) with a site's menu, sidebar and footer."""
    body = "".join(f"<p>{html.escape(p)}</p>" for p in text.split("\n\n"))
    chrome = "" if not nav else "<nav><ul>" + "".join(f'<li><a href="/{n.lower()}">{n}</a></li>' for n in NAV) + "</ul></nav>"
    side = (
        ""
        if not nav
        else '<aside><h3>Related</h3><ul><li><a href="/a">Getting started</a></li><li><a href="/b">Reference</a></li></ul></aside>'
    )
    foot = "" if not nav else "<footer>Copyright 2026 The Xiulian authors. All rights reserved. Terms of use.</footer>"
    return (
        f'<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head><body>{chrome}'
        f"<main><h1>{html.escape(title)}</h1>{body}</main>{side}{foot}</body></html>"
    )


def function_index() -> str:
    """A genindex-style page: every function of the repository's ``llm`` package, one entry a line."""
    entries = set()
    for f in sorted((ROOT / "llm").rglob("*.py")):
        mod = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        for name in re.findall(r"^\s*def ([a-z]\w+)\(", f.read_text(encoding="utf-8"), flags=re.M):
            entries.add(f"{name}() (in module {mod})")
    return "Index\n" + "\n".join(sorted(entries))


def list_of_tables() -> str:
    """A "List of Tables" page built from the documentation's headings."""
    heads = [h for f in sorted((ROOT / "docs").glob("*.md")) for h in re.findall(r"^#+ (.+)$", f.read_text(encoding="utf-8"), flags=re.M)]
    return "List of Tables\n" + "\n".join(f"Table {1 + i // 8}.{1 + i % 8}. {h}" for i, h in enumerate(heads))
