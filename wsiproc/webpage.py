"""The one Jinja2 environment that turns data into HTML pages: QC, cohort report and viewer.

Every page's markup lives in a template under ``wsiproc/templates/`` (package data), and Python
hands the templates plain values only. Autoescaping is on for every template, so a slide or
patient name is text wherever it appears; the few pieces that are markup on purpose (the shared
stylesheet and script, inlined so a page opens from disk with no server) come from
:func:`static_text` and are marked safe there, in one place.
"""

from __future__ import annotations

import functools
import math
from importlib.resources import files
from typing import Any

import jinja2
from markupsafe import Markup

TEMPLATES = files("wsiproc") / "templates"
"""The folder of the page templates, and of ``static/`` (the CSS and JS they inline)."""


def format_value(value: Any) -> str:
    """A value as short display text: missing and NaN as an en dash, floats to 4 digits
    (whole numbers from 1000), lists comma-joined.

    Examples
    --------
    >>> [format_value(v) for v in (None, float("nan"), 0.123456, 1593.2, 3, ["a", "b"], [])]
    ['–', '–', '0.1235', '1593', '3', 'a, b', '–']
    """
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(format_value(v) for v in value) or "–"
    return str(value)


def is_numeric(value: Any) -> bool:
    """Whether a table cell holds a number (right-aligned); booleans are not numbers here."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.cache
def static_text(name: str) -> Markup:
    """A file of ``templates/static/`` as trusted markup, for inlining into ``<style>`` or
    ``<script>``; these files ship with the package, never from user data."""
    return Markup(TEMPLATES.joinpath("static", name).read_text(encoding="utf-8"))


@functools.cache
def environment() -> jinja2.Environment:
    """The shared environment: autoescaped, undefined names are errors, lean whitespace."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("wsiproc", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = format_value
    env.tests["numeric"] = is_numeric
    env.globals["static_text"] = static_text
    return env


def render_page(template: str, **context: Any) -> str:
    """Render ``template`` (a file name under ``wsiproc/templates/``) with ``context``."""
    return environment().get_template(template).render(**context)
