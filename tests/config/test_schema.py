"""Every default is written once: schemas come from signatures, YAML files hold only what differs."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from pathlib import Path
from typing import Any, Union

import pytest
import yaml

from paramgolf.config.compose import CONF_DIR, HYDRA_META_KEYS, compose, to_container
from paramgolf.config.schema import SCHEMAS, _Builds

# Fields whose schema type is deliberately stricter than the signature: table rows checked key by key,
# and sub-groups chosen by their own config group.
RETYPED = {("build_optimizer", "rules"), ("build_optimizer", "muon"), ("MixedQuantizer", "table")}


def schemas() -> list[tuple[str, str, type]]:
    """Every component schema (settings dataclasses such as TrainConfig are their own single source)."""
    return [
        (group, name, schema)
        for group, entries in SCHEMAS.items()
        for name, schema in entries
        if "_target_" in {f.name for f in dataclasses.fields(schema)}
    ]


def target_of(schema: type) -> Any:
    from hydra.utils import get_object

    names = {f.name: f for f in dataclasses.fields(schema)}
    return get_object(names["_target_"].default) if "_target_" in names else None


def schema_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return inspect.Parameter.empty


def as_config_value(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


@pytest.mark.parametrize("group,name,schema", schemas(), ids=[f"{g or 'root'}:{n}" for g, n, _ in schemas()])
def test_schema_fields_have_the_signature_defaults_and_types(group, name, schema):
    target = target_of(schema)
    sig = inspect.signature(target)
    hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    fields = [f for f in dataclasses.fields(schema) if f.name not in HYDRA_META_KEYS]
    for f in fields:
        assert f.name in sig.parameters, f"{name}.{f.name} is not an argument of {target.__qualname__}"
        if (target.__name__, f.name) in RETYPED:
            continue
        p = sig.parameters[f.name]
        default = schema_default(f)
        if dataclasses.is_dataclass(default):  # a nested component: its own schema
            assert target_of(type(default)) is typing.get_type_hints(target.__init__)[f.name], (name, f.name)
            continue
        assert as_config_value(default) == as_config_value(p.default), (
            f"{name}.{f.name}: schema {default!r} vs code {p.default!r}"
        )
        assert f.type == _Builds._sanitized_type(hints[f.name]), (name, f.name, f.type)


def option_files() -> list[Path]:
    skip = {"experiment", "hydra"}  # presets; Hydra's own groups (hydra/launcher) have Hydra's schemas
    return sorted(p for p in CONF_DIR.rglob("*.yaml") if not skip & set(p.parts) and p.name != "config.yaml")


def schema_named(group: str, name: str) -> type | None:
    """The schema a YAML's defaults list names (`/schema/<group>/<name>@_here_`), else None."""
    prefix = f"/schema/{group}/"
    if not (name.startswith(prefix) and name.endswith("@_here_")):
        return None
    return dict(SCHEMAS.get(group, [])).get(name[len(prefix) : -len("@_here_")])


def fits(value: Any, annotation: Any) -> bool:
    """Whether a YAML value has the type the field declares (ints are floats, None fits Optional)."""
    if annotation is Any or isinstance(value, str) and value.startswith("${"):
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Union:
        return any(fits(value, a) for a in args)
    if annotation is type(None):
        return value is None
    if origin in (list, tuple):
        return isinstance(value, list) and all(fits(v, args[0]) for v in value) if args else isinstance(value, list)
    if dataclasses.is_dataclass(annotation) or origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(annotation, type) and issubclass(annotation, __import__("enum").Enum):
        return value in {m.name for m in annotation}
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    raise AssertionError(f"no rule for the annotation {annotation!r}")


def compare_body(path: str, body: dict, schema: type, problems: list[str]) -> None:
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)
    for key, value in body.items():
        if key not in fields:
            problems.append(f"{path}: {key} is not a key of {schema.__name__}")
            continue
        f = fields[key]
        default = schema_default(f)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            compare_body(f"{path}.{key}", value, type(default), problems)
            continue
        if value == as_config_value(default):
            problems.append(f"{path}: {key}: {value!r} repeats the default written in the code")
        if not fits(value, hints[key]):
            problems.append(f"{path}: {key}: {value!r} is not a {hints[key]}")


def test_option_files_hold_only_values_that_differ_from_the_code_and_have_its_types():
    problems: list[str] = []
    checked = 0
    for path in option_files():
        group = str(path.parent.relative_to(CONF_DIR))
        raw = yaml.safe_load(path.read_text()) or {}
        defaults = raw.pop("defaults", [])
        first = defaults[0] if defaults else None
        schema = schema_named(group, first) if isinstance(first, str) else None
        rel = str(path.relative_to(CONF_DIR))
        if schema is None:  # extends another option of its group: compare with that option
            parent = to_container(compose([f"{group}={first}"]))
            for part in group.split("/"):
                parent = parent[part]
            for key, value in raw.items():
                if parent.get(key) == value:
                    problems.append(f"{rel}: {key}: {value!r} repeats {group}={first}")
            continue
        checked += 1
        compare_body(rel, raw, schema, problems)
    assert checked >= 30
    assert not problems, "\n".join(problems)


def test_a_repeated_default_or_a_wrong_type_is_caught(tmp_path):
    """The check above can fail: a body repeating a default, and one with a string where an int goes."""
    from paramgolf.config.schema import ZstdConfig

    problems: list[str] = []
    compare_body("x.yaml", {"level": 22}, ZstdConfig, problems)
    compare_body("y.yaml", {"level": "high"}, ZstdConfig, problems)
    assert len(problems) == 2 and "repeats the default" in problems[0] and "is not a" in problems[1]


def test_signature_defaults_reach_the_composed_config():
    """A default changed in the code is the default of the config: no second copy to forget."""
    from paramgolf.evaluation.windows import Sliding
    from paramgolf.model.attention import CausalSelfAttention

    c = to_container(compose(["eval=sliding"]))
    assert c["eval"]["stride"] == inspect.signature(Sliding).parameters["stride"].default
    assert (
        c["arch"]["attention"]["gate_bias_init"]
        == inspect.signature(CausalSelfAttention).parameters["gate_bias_init"].default
    )
    assert c["name"] == "default"
