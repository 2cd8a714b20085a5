"""Text from a file is text: names and messages made safe to show in a page, and short.

File names, tensor names and metadata are written by whoever made the file. Streamlit renders the
text of captions, alerts, labels, tooltips and progress bars as Markdown, so a file named
``x ![i](http://host/t.png) **b**.png`` would turn bold and make every visitor's browser fetch that
URL. ``plain`` turns any text into Markdown that shows exactly its characters: every ASCII
punctuation character backslash-escaped (CommonMark lets each be), so no emphasis, link, image,
HTML, LaTeX, heading, list, table or Streamlit directive can start; and an invisible word joiner
after a ``:`` that touches the next character, before ``@`` and in ``www.``, since GitHub's
autolinks (``http://...``, ``www.``, e-mail addresses) and Streamlit's ``:emoji:`` and
``:material/icon:`` codes are found in the text after escapes are undone. ``plain_html`` does the
same for HTML and Plotly's titles. ``short_name`` and ``quoted`` shorten a long name for messages,
keeping its end (where the extension is).

Pure string work: the package quotes names with ``quoted``; the app passes every piece of text that
came from a file (or an error that quotes one) through ``plain`` where a page shows it.
"""

from __future__ import annotations

import html
import re
import string

NAME_CHARS = 80  # a name longer than this is shown as its start, "…", and its end
TEXT_CHARS = 1200  # a message longer than this (a long name quoted in it) is shortened the same way
ELLIPSIS = "…"
MARKDOWN_PUNCTUATION = frozenset(string.punctuation)  # CommonMark's escapable characters: all ASCII punctuation
# characters that would reorder or hide the text around them (a name "cod.exe\u202egnp." reads as a PNG)
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
REPLACEMENT = "\ufffd"
WORD_JOINER = "\u2060"  # zero width, no break: splits "http://" and "a@b.c" for autolinking, not for the eye
# where a word joiner goes: after a colon that touches the next character ("http://", ":smile:",
# "mailto:x"), before "@" (e-mail addresses) and between "www" and its dot; a colon before a space (as in
# every message) is left alone
AUTOLINK_STARTS = re.compile(r"(?<=:)(?=\S)|(?=@)|(?<=www)(?=\.)", re.IGNORECASE)


def short_name(name, max_chars: int = NAME_CHARS) -> str:
    """``name`` on one line, without bidi controls, at most ``max_chars`` characters.

    Control characters (newlines, tabs) become spaces and bidi controls become U+FFFD, so a name shows
    as what it is; a longer name keeps its first two thirds and its last third around an ellipsis.
    """
    text = "".join(" " if ch < " " or ch == "\x7f" else REPLACEMENT if ch in BIDI_CONTROLS else ch
                   for ch in str(name))
    if len(text) <= max_chars:
        return text
    tail = max(1, max_chars // 3)
    head = max(0, max_chars - tail - len(ELLIPSIS))
    return text[:head] + ELLIPSIS + text[-tail:]


def quoted(name, max_chars: int = NAME_CHARS) -> str:
    """A name as messages quote it: ``'short name'``."""
    return f"'{short_name(name, max_chars)}'"


def plain(text, max_chars: int = TEXT_CHARS) -> str:
    """Markdown that renders as exactly ``text`` (shortened to ``max_chars``): no markup of any kind.

    Use it for anything a page shows that came from a file: a file or tensor name, a metadata value,
    an error message quoting them. HTML needs nothing more: ``<`` escaped is a plain character.
    """
    # leading spaces would start a code block; neither end's spaces show anyway
    text = AUTOLINK_STARTS.sub(WORD_JOINER, short_name(text, max_chars).strip(" "))
    return "".join("\\" + ch if ch in MARKDOWN_PUNCTUATION else ch for ch in text)


def plain_name(name) -> str:
    """A file, picture or tensor name as Markdown that shows it, shortened to ``NAME_CHARS``."""
    return plain(name, NAME_CHARS)


def plain_html(text, max_chars: int = NAME_CHARS) -> str:
    """HTML (or a Plotly title, a subset of HTML) that shows exactly ``text`` (a name: shortened to
    ``NAME_CHARS``): no tag, no link."""
    return html.escape(short_name(text, max_chars))
