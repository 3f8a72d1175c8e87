"""examples/train_plain.py is a plain script: it never imports ofexp (issue #23)."""
from __future__ import annotations

import ast
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "train_plain.py"


def _imported_modules() -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            modules.add("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "__import__":
            modules.add(ast.unparse(node.args[0]) if node.args else "?")
    return modules


def test_train_plain_does_not_import_ofexp():
    modules = _imported_modules()
    assert modules, "no imports found: the script moved?"
    assert not [m for m in modules if m.split(".")[0] in ("ofexp", "")], modules


def test_train_plain_uses_only_torch_torchvision_numpy_mlflow_and_the_standard_library():
    third_party = {m.split(".")[0] for m in _imported_modules()} - {"argparse", "gzip", "os", "sys"}
    assert third_party <= {"torch", "torchvision", "numpy", "mlflow"}, third_party
