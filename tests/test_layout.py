"""The package layout's two rules, read from the import lines (ast, nothing imported):

- no module imports a command-line module (the CLIs import library packages only);
- the dataset format, files/ and data_prep/ do not load torch when imported (data_prep's
  worker processes stay light): no chain of module-level imports reaches it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CLIS = {f"aeatrain.{name}" for name in (
    "train", "evaluate", "predict", "refmaps", "export", "lbnlm", "compare", "cpu_launch",
)}  # fmt: skip
TORCH_FREE = ("aeatrain.data.format", "aeatrain.files", "data_prep")


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of aeatrain/ and data_prep/."""
    found = {}
    for package in ("aeatrain", "data_prep"):
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, *, top_level_only: bool) -> set[str]:
    """The modules ``name`` imports (``from a import b`` gives a.b when that is a module),
    with their parent packages; ``top_level_only``: not those inside functions or under
    ``if TYPE_CHECKING``, which importing the module does not run."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_level_only and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if (
                top_level_only
                and isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
            ):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.rsplit(".", child.level - 1)[0] if child.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                found.add(base)
                found.update(
                    f"{base}.{alias.name}"
                    for alias in child.names
                    if f"{base}.{alias.name}" in MODULES
                )
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    with_parents = set()
    for module in found:
        parts = module.split(".")
        with_parents.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return with_parents - {name}


def test_no_module_imports_a_command_line_module():
    offending = sorted(
        (name, imported)
        for name in MODULES
        for imported in _imports(name, top_level_only=False) & CLIS
    )
    assert offending == []


@pytest.mark.parametrize("root", TORCH_FREE)
def test_the_format_files_and_data_prep_do_not_load_torch(root):
    chains = {}  # module -> the chain of imports that reached it from a module of root
    for start in (m for m in MODULES if m == root or m.startswith(root + ".")):
        stack = [(start, (start,))]
        while stack:
            name, chain = stack.pop()
            for imported in _imports(name, top_level_only=True):
                if imported in MODULES and imported not in chains:
                    chains[imported] = (*chain, imported)
                    stack.append((imported, chains[imported]))
                elif imported.split(".")[0] == "torch":
                    pytest.fail(f"{' -> '.join(chain)} imports {imported}")
