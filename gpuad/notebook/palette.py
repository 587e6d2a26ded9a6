"""Every colour gpuad's displays use, in one place.

Text and surfaces are JupyterLab's theme variables with the light theme's value as the fallback
(`var(--jp-layout-color0, #ffffff)`): the views follow the light and dark themes in JupyterLab and
Notebook 7, and read as light pages in nbconvert's HTML and a plain browser. A fixed colour set on
the text but not on its background (or the reverse) was unreadable in one theme or the other
(`%gpuad_info` dark on near-black, the gradcheck header white on light grey): set both or neither.
Tints (diff lines, marks) are translucent over the theme's background, readable on either.
"""
from __future__ import annotations

# ---------------------------------------------------------------- surfaces and text

BACKGROUND = "var(--jp-layout-color0, #ffffff)"
FOREGROUND = "var(--jp-content-font-color1, #1f2328)"
MUTED = "var(--jp-content-font-color2, #57606a)"
HEADER_BACKGROUND = "var(--jp-layout-color2, #eaeef2)"
RULE = "var(--jp-border-color2, #d0d7de)"
LINK = "var(--jp-content-link-color, #0969da)"
CODE_BACKGROUND = "var(--jp-cell-editor-background, #f6f8fa)"
CODE_FOREGROUND = FOREGROUND

# ---------------------------------------------------------------- verdicts and bars

PASSED = "#1a7f37"
FAILED = "#cf222e"
BAR = "#4c8bf5"  # the timings' bars
SEARCH_HIT = "background-color: #ffd33d; color: #1f2328"  # a search match: its own text colour

# ---------------------------------------------------------------- syntax highlighting

# JupyterLab's editor colours, the classic light theme's values as fallbacks.
KEYWORD = "var(--jp-mirror-editor-keyword-color, #008000)"
BUILTIN = "var(--jp-mirror-editor-builtin-color, #008000)"
DEFINITION = "var(--jp-mirror-editor-def-color, #0000ff)"
DECORATOR = "var(--jp-mirror-editor-meta-color, #aa22ff)"
VARIABLE = "var(--jp-mirror-editor-variable-2-color, #00366d)"
LABEL = "var(--jp-mirror-editor-qualifier-color, #555555)"
NUMBER = "var(--jp-mirror-editor-number-color, #008800)"
STRING = "var(--jp-mirror-editor-string-color, #ba2121)"
COMMENT = "var(--jp-mirror-editor-comment-color, #408080)"

# ---------------------------------------------------------------- the link diff

DELETED_LINE = "rgba(255,80,80,.18)"
INSERTED_LINE = "rgba(40,180,70,.18)"
COLLAPSED_LINES = "rgba(128, 128, 128, 0.14)"
# A marked line: a tint and a bar of the mark's colour down its left edge.
MARKER_TINT, MARKER_BAR = "rgba(255,190,0,.38)", "#bf8700"
LINKED_TINT, LINKED_BAR = "rgba(130,80,223,.16)", "#8250df"
LINK_REF_TINT, LINK_REF_BAR = "rgba(9,105,218,.2)", "#0969da"

# ---------------------------------------------------------------- plots (matplotlib colours)

PLOT_AD = "tab:blue"
PLOT_FD = "tab:orange"
PLOT_ERROR = "tab:red"
PLOT_TOLERANCE = "0.5"
PLOT_GUIDE = "0.6"  # the checked point's vertical line
PLOT_MISSING = "0.85"  # heat-map cells with no value
