"""Boilerplate in stage 1, on hand-made pages that show each case and on the Debian FAQ (DocBook
output): manual navigation, ``<header>`` banners, cookie-consent and newsletter text are
removed; table header rows repeated on every page and long paragraphs that mention a privacy
policy stay."""

from __future__ import annotations

from tests.fixtures import faq_dir, require_faq


def _heuristics(text: str, lang: str = "en"):
    from datatrove.data import Document

    from llm.pipeline.heuristics import HeuristicFilter

    doc = Document(text=text, id="t", metadata={"language": lang, "source": ""})
    return HeuristicFilter(default={"min_words": 5, "min_stop_words": 0}).filter(doc), doc.text


BODY = (
    "The package manager keeps a database of the installed packages and of the files each one owns. "
    "When a package is removed, its configuration files stay on the disk until it is purged."
)


MORE = "Purging removes those files as well, and the database then forgets that the package was ever there."


def _docbook(title: str, prev_title: str, next_title: str, home: str = "The Example Manual") -> str:
    """A chapter as DocBook's XSL stylesheets write it (the Debian FAQ's layout)."""
    return f"""<html><head><title>{title}</title>
<link rel="home" href="index.html" title="{home}" /><link rel="up" href="index.html" title="{home}" />
<link rel="prev" href="p.html" title="{prev_title}" /><link rel="next" href="n.html" title="{next_title}" /></head><body>
<div class="navheader"><table width="100%" summary="Navigation header"><tr><th colspan="3" align="center">{title}</th></tr>
<tr><td align="left"><a accesskey="p" href="p.html">Prev</a> </td><th> </th><td align="right"> <a accesskey="n" href="n.html">Next</a></td></tr>
</table><hr /></div>
<div class="chapter"><div class="titlepage"><h1 class="title">{title}</h1></div><p>{BODY}</p></div>
<div class="navfooter"><hr /><table width="100%" summary="Navigation footer"><tr><td align="left"><a href="p.html">Prev</a> </td>
<td align="center"><a href="index.html">Up</a></td><td align="right"> <a href="n.html">Next</a></td></tr>
<tr><td align="left" valign="top">{prev_title} </td><td><a href="index.html">Home</a></td><td align="right" valign="top"> {next_title}</td></tr>
</table></div></body></html>"""


def test_docbook_navigation_removed():
    from llm.pipeline.extract import resiliparse_extract

    text = resiliparse_extract(_docbook("Chapter 7. Package basics", "Chapter 6. The archives", "Chapter 8. The tools"))
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines == ["Chapter 7. Package basics", BODY], lines  # the title once, no Prev/Next rows


def test_manual_navigation_without_marked_elements_removed():
    """Navigation in plain paragraphs, known by the neighbours' titles (``<link rel>``) and the
    navigation words; a page title written twice at the top; a code sample's closing brace at the
    end stays."""
    from llm.pipeline.extract import resiliparse_extract

    html = """<html><head><title>Loops</title><link rel="next" href="f.html" title="Functions" />
<link rel="prev" href="v.html" title="Variables" /></head><body>
<p>Next: <a rel="next" href="f.html">Functions</a>, Previous: <a href="v.html">Variables</a>, Up: <a href="i.html">Top</a></p>
<h1>Loops</h1><h1>Loops</h1><p>A loop runs its body again and again.</p><pre>while (1) {
  step();
}</pre>
<p>&laquo; Variables | Functions &raquo;</p></body></html>"""
    lines = [ln for ln in resiliparse_extract(html).splitlines() if ln.strip()]
    assert lines == ["Loops", "A loop runs its body again and again.", "while (1) {", "  step();", "}"], lines


def test_debian_faq_pages_start_with_their_title_once_and_end_with_text():
    require_faq()
    from llm.pipeline.extract import resiliparse_extract

    for lang, glob in (("en", "*.en.html"), ("zh", "*.zh-cn.html")):
        pages = sorted(faq_dir(lang).glob(glob))
        assert pages
        for page in pages:
            lines = [" ".join(ln.split()) for ln in resiliparse_extract(page.read_text(encoding="utf-8")).splitlines() if ln.strip()]
            assert lines[0] != lines[1], (page.name, lines[:2])
            # the footer row names the next chapter ("Chapter 2. ..."/"第 2 章 ...") or the manual
            assert not lines[-1].startswith(("Chapter", "第", "The Debian GNU/Linux FAQ", "Debian GNU/Linux 常见问题")), (
                page.name,
                lines[-1],
            )
            assert "\t" not in lines[-1], (page.name, lines[-1])


def test_site_header_banner_removed_article_header_kept():
    from llm.pipeline.extract import resiliparse_extract

    html = f"""<html><body><header><a href="/">ExampleShop</a><ul><li><a href="/p">Products</a></li><li><a href="/b">Blog</a></li>
<li><a href="/c">Contact us</a></li></ul><p>Summer sale: 50% off every laptop until Sunday!</p></header>
<main><article><header><h1>How dpkg works</h1><p>Posted by the maintainers</p></header><p>{BODY}</p></article></main></body></html>"""
    text = resiliparse_extract(html)
    for banner in ("ExampleShop", "Products", "Contact us", "Summer sale"):
        assert banner not in text, text
    assert "How dpkg works" in text and "Posted by the maintainers" in text and BODY in text


def test_cookie_consent_and_newsletter_text_removed():
    """In plain elements no selector knows: the C4 policy-line rule takes them."""
    from llm.pipeline.extract import resiliparse_extract

    html = f"""<html><body><div class="x1"><p>We use cookies to personalise content and ads and to analyse our traffic.</p>
<p>Accept all cookies or change your cookie settings at any time.</p></div>
<p>{BODY}</p><p>{MORE}</p>
<div class="x2"><p>Subscribe to our newsletter and get the best deals every week!</p><p>Enter your email address</p></div></body></html>"""
    ok, text = _heuristics(resiliparse_extract(html))
    assert ok is True
    assert "cookie" not in text.lower() and "newsletter" not in text and "email" not in text, text
    assert BODY in text and MORE in text


def test_long_paragraph_mentioning_privacy_policy_kept():
    """C4 removes short policy lines ("Read our privacy policy"), not a paragraph of content
    that ends with those words (the issue: a 597-character paragraph was deleted)."""
    para = (
        "The Debian project collects as little personal data as it can. Bug reports, mailing list posts and "
        "uploads are public by design, because the work happens in the open and anybody may read the archives "
        "later; the developers who process a report see only what its author chose to write into it. When a "
        "contributor asks for an account, the keyring maintainers keep the key fingerprint and the name that "
        "goes with it, and nothing else. Mirrors keep the usual web server logs for a short time. How the "
        "project handles those logs, who may read them and when they are deleted is written down in full in "
        "its privacy policy"
    )
    assert len(para) > 550
    ok, text = _heuristics(f"{para}\n{BODY}\nRead our privacy policy.")
    assert ok is True
    assert para in text
    assert "Read our privacy policy." not in text


def test_repeated_table_header_kept_repeated_chrome_removed(tmp_path):
    """Ten reference pages, each with the same table header row (and the same column notes) and
    the same site line in an unmarked <div>: the repeated-line remover takes the site line and
    keeps every table row (the issue: one page lost 17 of 17 header rows)."""
    from datatrove.data import Document

    from llm.pipeline.dedup import BoilerplateFinder, BoilerplateRemover, LineCounter
    from llm.pipeline.extract import resiliparse_extract

    header = "<tr><th>Operation</th><th>Result</th><th>Notes</th></tr>"
    docs = []
    for i in range(10):
        rows = "".join(f"<tr><td>x op{i}_{j} y</td><td>the result number {j} of page {i}</td><td>({j})</td></tr>" for j in range(3))
        html = f"""<html><body><div class="site">Example Docs: the reference for every release since 2001</div>
<h1>Module number {i}</h1><p>{BODY} This is page {i}.</p><table>{header}{rows}</table><p>Page {i} ends here.</p></body></html>"""
        docs.append(Document(text=resiliparse_extract(html), id=f"p{i}", metadata={"source": "ref"}))
    assert all("Operation\t\tResult\t\tNotes" in d.text for d in docs)
    counts, marked = tmp_path / "counts", tmp_path / "marked"
    list(LineCounter(str(counts)).run(iter(docs)))
    list(BoilerplateFinder(str(counts), str(marked)).run(None))
    out = list(BoilerplateRemover(str(marked)).run(iter(docs)))
    assert len(out) == 10
    for d in out:
        assert "Example Docs: the reference" not in d.text
        assert "Operation\t\tResult\t\tNotes" in d.text, d.text
        assert BODY in d.text
