"""Syntax highlighting of Python, LLVM IR and PTX as compact, theme-following HTML.

A highlighted token is a short element (`<b>define</b>`, `<g-v>%x</g-v>`)
that the view's one scoped stylesheet (`STYLE_SHEET`, inside `.gpuad-view`)
colours with JupyterLab's editor colours (`palette.KEYWORD`, …, with
light fallbacks outside JupyterLab), so code follows the light and dark
themes. Inline styles per token made a default compilation 1.4 MB of HTML.
Keywords are `<b>` and comments `<i>` (7 bytes a token, and bold and italic
by themselves); the other kinds are custom elements, which look like plain
text where the stylesheet is dropped (a sanitizer, an untrusted notebook in
JupyterLab): the code stays whole and readable. Numbers are left plain in IR
and PTX, where they are a fifth of the tokens and colour tells little.
Text is highlighted line by line so that folded functions, diff rows and
search results reuse the same highlighted lines.
"""
from __future__ import annotations

import html
from functools import cache

from pygments.lexers import LlvmLexer, PtxLexer, PythonLexer
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, String, Token

from gpuad.notebook import palette
from gpuad.notebook.palette import CODE_BACKGROUND, CODE_FOREGROUND, MUTED

# JupyterLab's code fonts spelled out: a sanitizer drops a var() font (untrusted notebooks), and a
# proportional fallback font misaligns the diff's columns.
CODE_FONT = "font-family: menlo, consolas, 'DejaVu Sans Mono', monospace; font-size: 12px; line-height: 1.35"

# Token kind -> (element, CSS). Most specific first: a token takes the first kind it is a subtype of.
# Kinds not listed (punctuation, plain names, whitespace) are left as text in the code's colour.
TOKEN_ELEMENTS: tuple[tuple[object, str, str], ...] = (
    # IR's types (`i64`, `double`) are a quarter of its tokens: plain, they cut the view by a fifth.
    (Keyword.Type, "", ""),
    (Keyword, "b", f"color: {palette.KEYWORD}; font-weight: bold"),
    (Name.Builtin, "g-b", f"color: {palette.BUILTIN}"),
    (Name.Function, "g-f", f"color: {palette.DEFINITION}"),
    (Name.Class, "g-f", ""),
    (Name.Decorator, "g-m", f"color: {palette.DECORATOR}"),
    (Name.Variable, "g-v", f"color: {palette.VARIABLE}"),
    (Name.Label, "g-l", f"color: {palette.LABEL}"),
    (Number, "g-n", f"color: {palette.NUMBER}"),
    (String, "g-s", f"color: {palette.STRING}"),
    (Comment, "i", f"color: {palette.COMMENT}; font-style: italic"),
    (Operator.Word, "b", ""),  # `and`, `not`, `in`: keywords to a reader
    (Operator, "", ""),  # PTX's commas and Python's `+`: as frequent as they are uninformative
    (Error, "", ""),  # the PTX lexer's unknown directives: plain text, not red boxes
)

# Token kinds left plain in a language (see the module's docstring).
PLAIN_KINDS = {"llvm": (Number,), "ptx": (Number,)}

# The look of a code block that a front end may drop with the stylesheet; what keeps it readable
# (white-space: pre, its scroll box) stays inline on each block (`code_block`).
CODE_STYLE = (f"background-color: {CODE_BACKGROUND}; color: {CODE_FOREGROUND}; {CODE_FONT}; "
              "padding: 6px 8px; margin: 0; border: none")
# Where tokens are: code blocks and the lines of a diff (`<b>` elsewhere in the view is left alone).
CODE_CONTAINERS = (".gpuad-code", ".gpuad-diff-lines")

# Scoped to the view so that nothing outside it changes; one copy per displayed view.
STYLE_SHEET = "<style>" + f".gpuad-view pre.gpuad-code{{{CODE_STYLE}}}" + "".join(
    ",".join(f".gpuad-view {box} {element}" for box in CODE_CONTAINERS) + f"{{{css}}}"
    for _, element, css in TOKEN_ELEMENTS if element and css
) + "</style>"

_LEXERS = {"python": PythonLexer, "llvm": LlvmLexer, "ptx": PtxLexer}


@cache
def _lexer(language: str):
    try:
        return _LEXERS[language](stripnl=False, ensurenl=False)
    except KeyError:
        raise ValueError(f"no highlighter for {language!r}; use one of {sorted(_LEXERS)}") from None


@cache
def element_of(ttype, language: str = "python") -> str:
    """The element a token of kind `ttype` is wrapped in ("" for plain text)."""
    if any(ttype in kind for kind in PLAIN_KINDS.get(language, ())):
        return ""
    while ttype is not Token:
        for kind, element, _ in TOKEN_ELEMENTS:
            if ttype is kind:
                return element
        ttype = ttype.parent
    return ""


def highlight_lines(text: str, language: str) -> list[str]:
    """One HTML fragment per line of `text` (no trailing newlines)."""
    lines: list[list[tuple[str, str]]] = [[]]
    for ttype, value in _lexer(language).get_tokens(text):
        # A token may span lines (docstrings); split it so each line closes its elements.
        for k, part in enumerate(value.split("\n")):
            if k:
                lines.append([])
            if part:
                lines[-1].append((element_of(ttype, language), part))
    if text.endswith("\n") or not text:
        lines.pop()
    return [_format_line(tokens) for tokens in lines]


def _format_line(tokens: list[tuple[str, str]]) -> str:
    out, k = [], 0
    while k < len(tokens):
        element, j = tokens[k][0], k
        while j < len(tokens) and tokens[j][0] == element:  # one element for a run of the same kind
            j += 1
        text = plain("".join(value for _, value in tokens[k:j]))
        out.append(f"<{element}>{text}</{element}>" if element else text)
        k = j
    return "".join(out)


def code_block(body_html: str, *, max_height: str = "32em") -> str:
    """A `<pre>` around already-highlighted lines; it scrolls itself past `max_height` and its width.

    Its look is the stylesheet's (`CODE_STYLE`, once per view); inline is only what a front end's
    CSS must not undo.
    """
    return (f'<pre class="gpuad-code" style="overflow: auto; max-height: {max_height}; white-space: pre; '
            f'text-align: left">{body_html}</pre>')


def highlight(text: str, language: str, *, max_height: str = "32em") -> str:
    """`text` as a highlighted `<pre>` block."""
    if not text:
        return code_block(f'<span style="color: {MUTED}">(empty)</span>', max_height=max_height)
    return code_block("\n".join(highlight_lines(text, language)), max_height=max_height)


def plain(text: str) -> str:
    """Escape text for HTML element content (quotes need no escaping there, and IR is full of them)."""
    return html.escape(text, quote=False)
