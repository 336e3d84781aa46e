"""Code bytes: the size of the source the artifact needs to rebuild and evaluate the model.

The count is the static import closure of the configured `paramgolf` modules:
every `import` / `from ... import` statement anywhere in a module (inside
functions too; only `if TYPE_CHECKING:` blocks, which never run, are skipped),
followed within the package, plus the `__init__` of every parent package (Python
runs those on import). Static parsing makes the number deterministic: it does
not depend on what happens to be imported in the current process.
"""

from __future__ import annotations

import ast
import importlib.util
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from paramgolf.errors import UserError


def _package_dirs(package: str) -> list[Path]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not importable from sys.path")
    return [Path(p) for p in spec.submodule_search_locations]


def module_file(module: str, package: str = "paramgolf") -> Path | None:
    """Source file of `module` inside `package` (its __init__.py for a package), or None."""
    parts = module.split(".")
    if parts[0] != package:
        return None
    for base in _package_dirs(package):
        target = base.joinpath(*parts[1:])
        for candidate in (target / "__init__.py", target.with_suffix(".py") if len(parts) > 1 else None):
            if candidate is not None and candidate.is_file():
                return candidate
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, except those under `if TYPE_CHECKING:`."""
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
        return
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        children: list[ast.AST] = list(node.orelse)
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        yield from _import_nodes(child)


def _imported_names(module: str, path: Path) -> set[str]:
    """Absolute names of the modules (and from-imported names) `module` refers to."""
    tree = ast.parse(path.read_bytes(), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            anchor = module.split(".") if is_package else module.split(".")[:-1]
            if node.level - 1 > len(anchor) - 1:
                raise UserError(f"{path}: relative import beyond the top-level package (level {node.level})")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        names.add(base)
        # `from pkg import mod` imports a submodule when one of that name exists.
        names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(roots: Iterable[str], package: str = "paramgolf") -> list[str]:
    """Sorted names of the `package` modules that importing every root module loads."""
    todo: list[str] = []
    for root in roots:
        if module_file(root, package) is None:
            raise UserError(f"code root {root!r} is not a module of package {package!r}")
        todo.append(root)
    seen: set[str] = set()
    while todo:
        module = todo.pop()
        for name in _with_parents(module):
            if name in seen:
                continue
            path = module_file(name, package)
            if path is None:
                continue  # a class or function imported with `from`, not a module
            seen.add(name)
            todo.extend(n for n in _imported_names(name, path) if n.split(".")[0] == package)
    return sorted(seen)


def code_bytes(roots: Iterable[str], package: str = "paramgolf") -> int:
    """Total bytes of the source files in the import closure of `roots`."""
    return sum(module_file(m, package).stat().st_size for m in import_closure(roots, package))


def _targets(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            if key == "_target_" and isinstance(value, str):
                yield value
            else:
                yield from _targets(value)
    elif isinstance(node, Sequence) and not isinstance(node, (str, bytes)):
        for item in node:
            yield from _targets(item)


def roots_from_config(cfg: Mapping, package: str = "paramgolf") -> list[str]:
    """Modules of every `package.*` `_target_` in a nested config (sorted, unique).

    `paramgolf.model.gpt.GPT` maps to `paramgolf.model.gpt`: the longest dotted
    prefix that is a module file.
    """
    roots = set()
    for target in _targets(cfg):
        if not target.startswith(package + "."):
            continue
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if module_file(candidate, package) is not None:
                roots.add(candidate)
                break
        else:
            raise UserError(f"_target_ {target!r} names no module of package {package!r}")
    return sorted(roots)
