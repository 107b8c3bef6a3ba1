"""The one dialog style of the dashboard's modal screens: centred, a bordered dialog (`#dialog`, or the
id given) on the surface colour. A screen adds its own width or border colour after it."""

from __future__ import annotations

MODAL_CSS = """
{name} {{
    align: center middle;
}}
{name} > #{dialog} {{
    width: {width};
    max-width: 96%;
    height: auto;
    max-height: 96%;
    border: thick ${border} 80%;
    background: $surface;
    padding: 0 1;
}}
"""


def modal_css(name: str, *, dialog: str = "dialog", width: int = 100, border: str = "primary") -> str:
    return MODAL_CSS.format(name=name, dialog=dialog, width=width, border=border)
