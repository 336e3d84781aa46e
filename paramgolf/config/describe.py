"""`paramgolf-config [GROUP...]`: every option of every config group with its keys, types, defaults and docs.

The listing is read from the schemas (which come from the components' signatures), so it is
what Hydra checks: e.g. `paramgolf-config arch/attention optimizer` before writing an override.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import typing
from typing import Any

from omegaconf import MISSING

from paramgolf.config.compose import CONF_DIR, HYDRA_META_KEYS


def _type_name(t: Any) -> str:
    if isinstance(t, type) and not typing.get_args(t):
        return t.__name__
    return str(t).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        return type(value).__name__ + "(…)" if dataclasses.is_dataclass(value) else value
    return MISSING


def _param_docs(target: Any) -> dict[str, str]:
    """Per-argument docs from the target's docstrings: "`name`: text" or "`name` None: text"."""
    docs: dict[str, str] = {}
    for obj in (target, getattr(target, "__init__", None)):
        for m in re.finditer(r"`(\w+)`( [\w.]{1,12})?: ([^`;\n]+)", inspect.getdoc(obj) or ""):
            docs.setdefault(
                m.group(1), ((m.group(2) or "").strip() + ": " if m.group(2) else "") + m.group(3).strip().rstrip(".,")
            )
    return docs


def _comment_docs(schema: type) -> dict[str, str]:
    """A settings dataclass's field comments (`name: type = default  # text`)."""
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, re.M)}


def _target_of(schema: type) -> Any:
    names = {f.name: f for f in dataclasses.fields(schema)}
    if "_target_" not in names:
        return None
    from hydra.utils import get_object

    return get_object(names["_target_"].default)


def describe(schema: type) -> list[str]:
    target = _target_of(schema)
    lines = []
    head = f"  {schema.__name__}"
    if target is not None:
        summary = (inspect.getdoc(target) or "").split("\n")[0]
        head += f"  → {target.__module__}.{target.__qualname__}" + (f"\n      {summary}" if summary else "")
    lines.append(head)
    docs = _param_docs(target) if target is not None else _comment_docs(schema)
    for f in dataclasses.fields(schema):
        if f.name in HYDRA_META_KEYS:
            continue
        default = _default(f)
        text = f"    {f.name}: {_type_name(f.type)} = {'(required)' if default is MISSING else repr(default)}"
        if f.name in docs:
            text += f"   # {docs[f.name]}"
        lines.append(text)
    return lines


def options_of(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml")) if group else []


def main(argv: list[str] | None = None) -> None:
    from paramgolf.config.schema import SCHEMAS

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    unknown = [g for g in argv if g not in SCHEMAS]
    if unknown:
        print(
            f"paramgolf-config: error: unknown group {unknown[0]!r}; groups: {', '.join(g for g in SCHEMAS if g)}",
            file=sys.stderr,
        )
        sys.exit(2)
    for group in argv or list(SCHEMAS):
        opts = options_of(group)
        print(f"{group or '(root)'}" + (f"   options: {', '.join(opts)}" if opts else ""))
        for _, schema in SCHEMAS[group]:
            print("\n".join(describe(schema)))
        print()


if __name__ == "__main__":
    main()
