"""A test corpus from real pages with planted duplicates, harmful pages and bad input.

``build_corpus(out, pages)`` copies python3.11-doc pages into ``out/html`` and plants, with a
record of what was planted in ``out/planted.json``:

- exact duplicates: copies of pages with white space and letter case changed (the normalised
  hash must catch them);
- near duplicates: copies with one sentence changed, or with two paragraphs swapped;
- harmful pages: a page of violent threats, one of hate, one of explicit adverts, in English
  and Chinese, phrased differently from the classifier's seed examples;
- a clean blog page that is a bulleted list with emoji (it must survive);
- bad input: a page of undecodable bytes, an empty page, and a WARC file with one good
  record, one broken (truncated) record and another good one.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import zlib
from pathlib import Path

HARMFUL = {
    "violence_en": "Grab a knife tonight and kill him slowly. Slaughter his children, burn the house with them "
    "inside and make them scream while they die. Shoot anyone who tries to help them. When the "
    "police come, throw the bomb at the car and stab the officers until they stop moving. Then "
    "we will go to the market and murder the people there, one after the other, and leave the "
    "bodies in the street so that the whole town is afraid of us.",
    "hate_en": "People of that tribe are vermin, dirty animals and subhuman trash. We must exterminate them all, "
    "hang them in the streets and wipe their filthy race from the country. They are a disease in "
    "our land and they do not deserve to live next to us. Drive them out of their homes, burn "
    "their shops and beat their children, because that is all those parasites understand, and "
    "nobody will miss them when they are gone.",
    "porn_en": "Free xxx porn tube: hardcore sex videos, naked sluts on live sex cams, explicit nude porn pictures "
    "and xxx clips updated every day, watch hardcore porn now. Join the best adult site on the web "
    "for free and see thousands of the hottest girls in explicit videos, with new clips every "
    "hour and no sign up needed, only for adults over the age of eighteen.",
    "violence_zh": "今晚拿刀去杀了他，把他全家都烧死，让他们惨叫着死去，谁来帮忙就开枪打死谁。"
    "警察来了就扔炸弹，把他们一个一个捅死，再去市场把那里的人都杀光，让全城的人都害怕我们。",
    "porn_zh": "免费色情视频网站，成人电影在线看，裸聊直播，淫秽图片每日更新，成人视频免费下载。"
    "最火辣的美女主播在线等你，无需注册，每小时更新最新的激情视频，仅限十八岁以上成人观看。",
}

BLOG = """<html><head><meta charset="utf-8"><title>Summer fruit</title></head><body>
<nav><a href="/">Home</a> | <a href="/blog">Blog</a> | <a href="/about">About</a></nav>
<main><h1>The fruit we ate this summer 🍓</h1>
<p>Every summer we keep a list of the fruit that the family ate in the garden, and this year the list is longer
than ever, so here it is with the ones we liked the most at the top.</p>
<ul><li>Strawberries 🍓 from the garden were sweet and there were many of them</li>
<li>Cherries 🍒 from the old tree were the best part of the summer for the children</li>
<li>Peaches 🍑 from the market were soft and we ate them with cream</li>
<li>Watermelon 🍉 was the fruit for the hottest days of August</li>
<li>Blueberries 🫐 went into pancakes on Sunday mornings</li></ul>
<p>Next year we would like to plant an apple tree and a pear tree, if there is room for them in the garden.</p>
</main><footer>© 2024 Our garden blog · <a href="/privacy">Privacy</a></footer></body></html>"""


def _page(title: str, body: str) -> str:
    return (
        f'<html><head><meta charset="utf-8"><title>{title}</title></head><body>'
        f'<nav><a href="/">Home</a></nav><main><h1>{title}</h1><p>{body}</p></main>'
        f"<footer>Contact us</footer></body></html>"
    )


def _swap_paragraphs(html: str, rng: random.Random) -> str | None:
    paras = list(re.finditer(r"<p>.*?</p>", html, flags=re.S))
    long = [m for m in paras if len(m.group(0)) > 200]
    if len(long) < 4:
        return None
    a, b = sorted(rng.sample(range(len(long)), 2))
    ma, mb = long[a], long[b]
    return html[: ma.start()] + mb.group(0) + html[ma.end() : mb.start()] + ma.group(0) + html[mb.end() :]


def _change_sentence(html: str, rng: random.Random) -> str | None:
    paras = [m for m in re.finditer(r"<p>([^<]{80,}?)</p>", html)]
    if not paras:
        return None
    m = rng.choice(paras)
    return html[: m.start(1)] + "This sentence was changed by the planting script. " + m.group(1) + html[m.end(1) :]


def _warc_record(uri: str, html: bytes) -> bytes:
    http = b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
    head = (
        f"WARC/1.0\r\nWARC-Type: response\r\nWARC-Target-URI: {uri}\r\n"
        f"WARC-Record-ID: <urn:uuid:{zlib.crc32(uri.encode()):012d}>\r\nWARC-Date: 2024-01-01T00:00:00Z\r\n"
        f"Content-Type: application/http; msgtype=response\r\nContent-Length: {len(http)}\r\n\r\n"
    ).encode()
    return head + http + b"\r\n\r\n"


def build_corpus(out: str | Path, pages: list[Path], docs_root: Path, *, n_exact: int = 6, n_near: int = 10, seed: int = 0) -> dict:
    rng = random.Random(seed)
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    html_dir = out / "html"
    html_dir.mkdir(parents=True)
    planted: dict = {"pages": [], "exact": [], "near": [], "harmful": [], "clean": [], "bad": {}}
    for p in pages:
        rel = p.relative_to(docs_root)
        dst = html_dir / "docs" / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(p, dst)
        planted["pages"].append(f"docs/{rel}")
    texts = {r: (html_dir / r).read_text(encoding="utf-8") for r in planted["pages"]}
    candidates = [r for r in planted["pages"] if "genindex" not in r and len(texts[r]) > 8000]
    rng.shuffle(candidates)
    for i, r in enumerate(candidates[:n_exact]):
        html = texts[r]
        copy = re.sub(r"</p>", "  </p>", html).replace("<p>", "<p>\n")  # white space changed
        if i % 2:
            copy = re.sub(r"(<p>\s*)(\w)", lambda m: m.group(1) + m.group(2).swapcase(), copy)  # case changed
        name = f"planted/exact_{i}.html"
        (html_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (html_dir / name).write_text(copy, encoding="utf-8")
        planted["exact"].append({"copy": name, "of": r})
    k = 0
    for r in candidates[n_exact:]:
        if k >= n_near:
            break
        fn = _swap_paragraphs if k % 2 else _change_sentence
        copy = fn(texts[r], rng)
        if copy is None:
            continue
        name = f"planted/near_{k}.html"
        (html_dir / name).write_text(copy, encoding="utf-8")
        planted["near"].append({"copy": name, "of": r, "how": fn.__name__.strip("_")})
        k += 1
    for key, text in HARMFUL.items():
        name = f"planted/harmful_{key}.html"
        (html_dir / name).write_text(_page(key.replace("_", " "), text), encoding="utf-8")
        planted["harmful"].append(name)
    (html_dir / "planted/blog_fruit.html").write_text(BLOG, encoding="utf-8")
    planted["clean"].append("planted/blog_fruit.html")
    (html_dir / "planted/undecodable.html").write_bytes(b"<html><body><p>" + bytes(range(128, 256)) * 20 + b"</p></body></html>")
    (html_dir / "planted/empty.html").write_bytes(b"")
    planted["bad"] = {"undecodable": ["planted/undecodable.html"], "empty_file": ["planted/empty.html"]}
    warc = out / "warc"
    warc.mkdir()
    good = [r for r in candidates[n_exact + n_near :] if r not in {x["of"] for x in planted["near"]}][:2]
    broken = _warc_record("http://example.org/broken", b"<html><body><p>lost</p></body></html>")[:-60]
    data = (
        _warc_record(f"http://docs.example.org/{good[0]}", texts[good[0]].encode())
        + broken
        + _warc_record(f"http://docs.example.org/{good[1]}", texts[good[1]].encode())
    )
    (warc / "crawl.warc").write_bytes(data)
    planted["warc"] = {"file": "warc/crawl.warc", "good": [f"http://docs.example.org/{g}" for g in good], "broken": 1}
    (out / "planted.json").write_text(json.dumps(planted, indent=1))
    return planted
