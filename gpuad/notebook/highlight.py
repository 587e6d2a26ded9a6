"""Syntax highlighting of Python, LLVM IR and PTX as HTML with inline styles.

Styles are inline (`HtmlFormatter(noclasses=True)`) because JupyterLab's
sanitizer drops `<style>` blocks from untrusted outputs. Text is
highlighted line by line so that folded functions, diff rows and search
results can reuse the same highlighted lines.
"""
from __future__ import annotations

import html
from functools import cache

from pygments import format as format_tokens
from pygments.formatters import HtmlFormatter
from pygments.lexers import LlvmLexer, PtxLexer, PythonLexer
from pygments.styles.default import DefaultStyle
from pygments.token import Whitespace


class GpuadStyle(DefaultStyle):
    """Pygments' default colours, minus the grey on whitespace.

    Inline styles repeat on every token; styling blanks roughly doubles the
    size of a highlighted module for no visible gain.
    """

    styles = {**DefaultStyle.styles, Whitespace: ""}


# Light colours on a background we set ourselves: readable in light and dark themes.
STYLE = GpuadStyle
CODE_BACKGROUND = "#f6f8fa"
CODE_FOREGROUND = "#1f2328"
CODE_FONT = "font-family: monospace; font-size: 12px; line-height: 1.35"

_LEXERS = {"python": PythonLexer, "llvm": LlvmLexer, "ptx": PtxLexer}


@cache
def _formatter() -> HtmlFormatter:
    return HtmlFormatter(noclasses=True, nowrap=True, style=STYLE)


@cache
def _lexer(language: str):
    try:
        return _LEXERS[language](stripnl=False, ensurenl=False)
    except KeyError:
        raise ValueError(f"no highlighter for {language!r}; use one of {sorted(_LEXERS)}") from None


def highlight_lines(text: str, language: str) -> list[str]:
    """One HTML fragment per line of `text` (no trailing newlines)."""
    lines: list[list] = [[]]
    for ttype, value in _lexer(language).get_tokens(text):
        # A token may span lines (docstrings); split it so each line closes its spans.
        parts = value.split("\n")
        for k, part in enumerate(parts):
            if k:
                lines.append([])
            if part:
                lines[-1].append((ttype, part))
    if text.endswith("\n") or not text:
        lines.pop()
    formatter = _formatter()
    # The formatter ends every line it writes with a newline; callers join lines themselves.
    return [format_tokens(tokens, formatter).rstrip("\n") for tokens in lines]


def code_block(body_html: str, *, max_height: str = "32em") -> str:
    """A `<pre>` around already-highlighted lines, with our own colours."""
    return (
        f'<pre style="background-color: {CODE_BACKGROUND}; color: {CODE_FOREGROUND}; {CODE_FONT}; '
        f'padding: 6px 8px; margin: 0; overflow: auto; max-height: {max_height}; white-space: pre">'
        f"{body_html}</pre>"
    )


def highlight(text: str, language: str, *, max_height: str = "32em") -> str:
    """`text` as a highlighted, self-styled `<pre>` block."""
    if not text:
        return code_block('<span style="color: #6e7781">(empty)</span>', max_height=max_height)
    return code_block("\n".join(highlight_lines(text, language)), max_height=max_height)


def plain(text: str) -> str:
    """Escape text for HTML (for places where highlighting is not wanted)."""
    return html.escape(text, quote=False)
