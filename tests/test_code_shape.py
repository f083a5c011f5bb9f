"""The code's shape rules (issue 24), checked where CI sees them: a newcomer reads any module
top-down and any function on one screen.

A module of ``src/`` or ``plugins/`` over 400 lines says why in its docstring (the words "400
lines"); a function or method is at most 60 lines, its decorators and docstring included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(ROOT / "src").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")])
MODULE_LINES, FUNCTION_LINES = 400, 60


def test_the_rules_see_the_package():
    assert len(SOURCES) > 50 and ROOT / "src" / "dlf" / "engine" / "run.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_sizes(path: Path):
    text = path.read_text()
    tree = ast.parse(text)
    lines = text.count("\n")
    if lines > MODULE_LINES:
        docstring = " ".join((ast.get_docstring(tree) or "").split())
        assert f"{MODULE_LINES} lines" in docstring, f"{lines} lines, no reason in its docstring"
    long = [
        f"{node.name} ({length} lines, line {node.lineno})"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for first in [min([node.lineno, *(d.lineno for d in node.decorator_list)])]
        for length in [node.end_lineno - first + 1]
        if length > FUNCTION_LINES
    ]
    assert not long, f"over {FUNCTION_LINES} lines: {', '.join(long)}"
