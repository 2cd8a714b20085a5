"""Text from a file is text: plain() renders as exactly its characters in Markdown, with no markup at all.

The reference renderer is markdown-it-py with GitHub's extensions (tables, strikethrough, autolinks),
the CommonMark + GFM that Streamlit's renderer follows; the browser test checks Streamlit itself.
"""

import html
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from glom_viz.text import ELLIPSIS, NAME_CHARS, TEXT_CHARS, WORD_JOINER, plain, plain_html, quoted, short_name

markdown_it = pytest.importorskip("markdown_it")
RENDERER = markdown_it.MarkdownIt("gfm-like")
INJECTIONS = [
    "x ![i](http://127.0.0.1:8628/name.png) **b**.png",
    "[click](javascript:alert(1)).jpg",
    "<img src=http://127.0.0.1:9/x.png onerror=alert(1)>.png",
    "<script>alert(1)</script>",
    "# heading\n- item\n1. one\n> quote",
    "| a | b |\n|---|---|\n| 1 | 2 |",
    "`code` ~~gone~~ _em_ *em* __strong__",
    "$\\frac{1}{2}$ and $$x$$",
    ":red[coloured] :material/home: :smile:",
    "www.example.com http://example.com/a_b_c mail@example.com",
    "&lt;b&gt; &amp; &#x41;",
    "    indented code",
    "line\\\\ break\\",
    "trailing\\",
    "cod.exe\u202egnp.png",
    "[ref]: http://127.0.0.1:9/r\n[ref]",
]


def rendered_text(markdown: str) -> tuple[str, list[str]]:
    """(the text a reader sees, the HTML tags other than the paragraph) of a Markdown string."""
    out = RENDERER.render(markdown)
    tags = [tag for tag in re.findall(r"</?([a-zA-Z0-9]+)", out) if tag != "p"]
    seen = html.unescape(re.sub(r"</?p>", "", out)).replace(WORD_JOINER, "")
    return seen.strip(), tags


@pytest.mark.parametrize("name", INJECTIONS)
def test_plain_shows_exactly_the_characters_and_no_markup(name):
    seen, tags = rendered_text(plain(name))
    assert tags == []  # no <img>, <a>, <strong>, <code>, <h1>, <table>, <script>...
    assert seen == short_name(name, TEXT_CHARS).strip()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=120))
def test_plain_of_any_text_renders_as_that_text(text):
    seen, tags = rendered_text(plain(text))
    assert tags == []
    assert seen == short_name(text, TEXT_CHARS).strip()


def test_an_injected_image_becomes_visible_text():
    shown = plain("x ![i](http://127.0.0.1:8628/name.png) **b**.png")
    assert "![" not in shown and "](" not in shown and "**" not in shown


def test_short_name_keeps_the_start_and_the_extension():
    name = "holiday-" + "very-long-" * 300 + "final.png"
    short = short_name(name)
    assert len(short) == NAME_CHARS and short.startswith("holiday-very-long-") and short.endswith("final.png")
    assert ELLIPSIS in short
    assert short_name("cat.png") == "cat.png"
    assert quoted("a" * 1000).startswith("'a") and len(quoted("a" * 1000)) == NAME_CHARS + 2


def test_short_name_puts_a_name_on_one_line_and_shows_hidden_reordering():
    assert short_name("two\nlines\tand\x00nul") == "two lines and nul"
    assert "\u202e" not in short_name("cod.exe\u202egnp.png") and "\ufffd" in short_name("cod.exe\u202egnp.png")


def test_plain_shortens_a_long_message():
    message = "could not read '" + "x" * 5000 + "': upload it again"
    assert len(plain(message, max_chars=300).replace("\\", "").replace(WORD_JOINER, "")) == 300
    assert plain(message, max_chars=300).endswith("upload it again")


def test_plain_html_is_text_in_html_and_plotly_titles():
    assert plain_html('<a href="http://x">x</a> & <b>') == "&lt;a href=&quot;http://x&quot;&gt;x&lt;/a&gt; &amp; &lt;b&gt;"
    assert len(plain_html("y" * 5000, max_chars=100)) == 100 and len(plain_html("y" * 5000)) == NAME_CHARS


def test_autolinks_are_broken_where_the_renderer_finds_them_in_the_text():
    shown = plain("see http://127.0.0.1:9/x and www.example.com and me@example.com")
    assert "://" not in shown.replace("\\", "") and f"http\\:{WORD_JOINER}" in shown
    assert f"www{WORD_JOINER}" in shown and f"me{WORD_JOINER}" in shown


def test_messages_keep_their_colons_untouched():
    assert WORD_JOINER not in plain("'a.png' is empty (0 bytes): upload the image file again")
