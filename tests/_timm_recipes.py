"""The sidecar recipes of docs/features.md, read from the document itself.

The timm tests build every recipe that has a ``timm`` key, so the published JSON and what is
tested cannot drift apart.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "features.md"
TIMM_RECIPES = ("uni", "h-optimus-0", "virchow2", "resnet50_trunc")
"""The timm recipes the document must hold (issue 15, item 4)."""


def doc_recipes() -> dict[str, dict]:
    """Every ```json block of docs/features.md that is a sidecar, by its ``name``."""
    blocks = re.findall(r"```json\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    out = {}
    for block in blocks:
        raw = json.loads(block)
        if isinstance(raw, dict) and "name" in raw:
            out[raw["name"]] = raw
    return out


def timm_recipes() -> dict[str, dict]:
    """The recipes with a ``timm`` key."""
    return {name: raw for name, raw in doc_recipes().items() if "timm" in raw}
