"""gpuad's colours are typed in one module (gpuad/notebook/palette.py)."""
from __future__ import annotations

import re
from pathlib import Path

from gpuad.notebook import palette

PACKAGE = Path(__file__).resolve().parent.parent / "gpuad"
# A CSS colour: a hex literal, a theme variable (fonts aside) with its fallback, or rgb()/rgba().
COLOUR = re.compile(r"#[0-9a-fA-F]{3}(?:[0-9a-fA-F]{3})?\b|var\(--jp-(?![\w-]*font-family)|rgba?\(")


def test_no_module_but_the_palette_types_a_colour():
    typed = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "palette.py":
            continue
        hits = [n for n, line in enumerate(path.read_text().splitlines(), 1)
                if COLOUR.search(line.split("# ")[0])]
        if hits:
            typed[str(path.relative_to(PACKAGE))] = hits
    assert not typed, f"colours typed outside gpuad/notebook/palette.py: {typed}"


def test_theme_colours_fall_back_to_the_light_theme():
    themed = {name: value for name, value in vars(palette).items()
              if isinstance(value, str) and value.startswith("var(")}
    surfaces = {"BACKGROUND", "FOREGROUND", "MUTED", "RULE", "HEADER_BACKGROUND", "CODE_BACKGROUND"}
    assert surfaces <= set(themed)
    for name, value in themed.items():
        assert re.fullmatch(r"var\(--jp-[\w-]+, #[0-9a-f]{6}\)", value), (name, value)
