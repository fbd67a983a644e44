"""docs/reference.md says what the code does: it is what docs/reference.py writes from it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_the_reference_is_the_code_s():
    spec = importlib.util.spec_from_file_location("reference", DOCS / "reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    assert (DOCS / "reference.md").read_text(encoding="utf-8") == reference.render(), \
        "docs/reference.md is out of date: run .venv/bin/python docs/reference.py"
