"""No module of lungjax reads another module's ``_private`` name: a name shared between modules is public,
or it moves to the module that uses it. A module's own underscore names are its business."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lungjax"


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(path: Path) -> list[str]:
    """``module._name`` reads and ``from module import _name`` lines of lungjax modules in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    lungjax_names, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lungjax":
            for alias in node.names:
                if _is_private(alias.name):
                    found.append(f"from {node.module} import {alias.name}")
                lungjax_names.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "lungjax":
                    lungjax_names.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in lungjax_names:
                found.append(f"{ast.unparse(node.value)}.{node.attr}")
    return found


def test_the_checker_finds_both_forms(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from lungjax.evaluation.stats import numeric\nfrom lungjax.models.resnet import _hidden\n"
        "import lungjax.trees\nnumeric._divide(1, 2)\nlungjax.trees._flat\nself._own = 1\n"
    )
    assert sorted(private_uses(module)) == [
        "from lungjax.models.resnet import _hidden",
        "lungjax.trees._flat",
        "numeric._divide",
    ]


def test_no_module_reads_another_modules_private_names():
    found = {
        (str(path.relative_to(PACKAGE)), use) for path in sorted(PACKAGE.rglob("*.py")) for use in private_uses(path)
    }
    assert found == set()
