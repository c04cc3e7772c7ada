"""Architecture rules that import-linter cannot express (its layer contracts run in .ci/run as `lint-imports`).

No torchrobust module uses another module's private (``_``-prefixed) names: neither ``from torchrobust.x import _y``
nor ``x._y`` on an imported torchrobust module. Function-level imports count as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "torchrobust"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def private_uses(source: str, module: str, is_package: bool = False) -> list[str]:
    """``"line: what"`` for every use of another torchrobust module's private name in ``source``."""
    tree = ast.parse(source)
    found: list[str] = []
    bound: dict[str, str] = {}  # local name -> torchrobust module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            if not target.startswith("torchrobust") or target == module:
                continue
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{node.lineno}: from {target} import {alias.name}")
                else:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torchrobust") and alias.name != module:
                    bound[alias.asname or alias.name] = alias.name if alias.asname else alias.name.split(".")[0]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr} ({bound[node.value.id]})")
    return found


def test_the_checker_sees_private_imports_and_attribute_uses() -> None:
    src = ("from torchrobust.forge import _batches\n"
           "def f():\n    from .cli import _floats\n    from torchrobust import checkpoint\n"
           "    return checkpoint._umask()\n")
    assert len(private_uses(src, "torchrobust.evaluate.x")) == 3
    ok = "from ._helpers import x\nfrom . import _private_module_of_mine\nfrom torchrobust.io import write_texts\n"
    assert private_uses("def _own():\n    pass\n_own()\n", "torchrobust.x") == []
    assert private_uses(ok, "torchrobust.evaluate.x") == [
        "2: from torchrobust.evaluate import _private_module_of_mine"]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    uses = private_uses(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")
    assert uses == [], f"{path.relative_to(PACKAGE.parent)} uses private names of other modules: {uses}"
