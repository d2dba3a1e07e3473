"""The import graph reads as the pipeline: concepts -> methods -> edits -> eval -> report, models and linalg below
everything, the CLI on top, the benchmark world a plugin. Every import counts, lazy ones inside functions too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import erasekit

PACKAGE = Path(erasekit.__file__).parent

# (files under this prefix, may not import modules starting with any of these, why)
RULES = [
    ("edits.py", ("erasekit.methods",), "an Edit loads and applies without knowing how it was fitted"),
    ("eval/", ("erasekit.methods", "erasekit.api", "erasekit.world"), "evaluation judges any Edit"),
    ("attacks/", ("erasekit.methods", "erasekit.api", "erasekit.world"), "attacks judge any Edit"),
    ("methods/", ("erasekit.world", "erasekit.eval", "erasekit.cli"), "methods know no benchmark world, eval or CLI"),
    ("models/", ("erasekit.methods", "erasekit.world", "erasekit.eval"), "adapters serve methods and know no world"),
    ("linalg.py", ("erasekit.",), "the solver is plain tensors"),
    ("registry.py", ("erasekit.",), "the registry is below everything"),
]
ALLOWED = ("erasekit.errors",)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` for every import in ``path``, relative imports resolved, ``from x import y`` as ``x.y``."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found.append((node.lineno, target))
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return found


def violations() -> list[str]:
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        for prefix, banned, why in RULES:
            if not rel.startswith(prefix):
                continue
            for line, name in imported_modules(path):
                if name.startswith(ALLOWED):
                    continue
                if any(name == b.rstrip(".") or name.startswith(b if b.endswith(".") else f"{b}.") for b in banned):
                    broken.append(f"{rel}:{line} imports {name} ({why})")
    return sorted(set(broken))


def test_no_module_imports_against_the_architecture():
    assert violations() == []


def test_the_rule_walker_sees_lazy_relative_imports(tmp_path, monkeypatch):
    """A rule checker that misses an import inside a function would pass vacuously: show that it catches one."""
    fake = tmp_path / "erasekit"
    (fake / "eval").mkdir(parents=True)
    (fake / "eval" / "x.py").write_text("def f():\n    from ..methods import uce\n", encoding="utf-8")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert violations() == [
        "eval/x.py:2 imports erasekit.methods (evaluation judges any Edit)",
        "eval/x.py:2 imports erasekit.methods.uce (evaluation judges any Edit)",
    ]


@pytest.mark.parametrize(
    ("statement", "forbidden"),
    [
        ("import erasekit", "torch"),  # `erasekit --help` stays fast
        ("import erasekit.methods", "erasekit.methods.uce"),  # the package imports no method
        ("import erasekit.edits as e; e.MODULE_KINDS.get('gloce')", "erasekit.methods.gloce.method"),
        ("from erasekit.models import load_pipeline; load_pipeline('erasekit:tiny')", "erasekit.world.generator"),
    ],
)
def test_importing_a_part_does_not_drag_in_the_rest(statement, forbidden):
    code = f"{statement}; import sys; print({forbidden!r} in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
