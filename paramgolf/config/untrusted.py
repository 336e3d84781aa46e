"""A run directory's saved config, read as untrusted input (DESIGN.md: files a user receives are untrusted).

Hydra instantiates whatever `_target_` a config names and resolves whatever `${...}` it holds, so
a run directory someone hands you could run code (`_target_: shutil.copyfile`) or read the
environment (`name: ${oc.env:SECRET}`). `load_saved_config` reads `.hydra/config.yaml` as data:

- yaml.safe_load (no Python objects; YAML aliases refused, so no exponential expansion);
- the only interpolation allowed is a plain reference to another key, `${quant.keep_float_max_numel}`:
  the conf tree writes those and Hydra saves them unresolved; a resolver (`${oc.env:...}`, `${now:}`)
  or anything else with `${` is refused. References are resolved, then
- every node where a paramgolf schema puts a component must be one of those schemas: its `_target_`
  one of theirs, its keys their fields, its values of their types (`component_schemas()`, derived
  from paramgolf.config.schema.SCHEMAS); a `_target_` anywhere else, or a Hydra meta key the
  schemas do not use (`_args_`, `_recursive_`, ...), is refused.

`load_saved_overrides` reads `.hydra/overrides.yaml`, which paramgolf-eval composes again: only
`key=value` overrides of the config tree pass (no `hydra.*`, `+`, `++`, `~`, `@package`, `${`).
Every refusal is a UserError naming the file, the key and the value, raised before anything is
instantiated.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from paramgolf.config.schema import SCHEMAS
from paramgolf.errors import UserError

REFERENCE = re.compile(r"\$\{[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\}")  # ${a.b.c}: no resolver, no relative key
OVERRIDE_KEY = re.compile(r"[A-Za-z_]\w*(?:[./][A-Za-z_]\w*)*")  # train.iterations, quant/codec
REFUSED = "refused (was the file edited, or written by another version of paramgolf?)"


def _is_meta(key: str) -> bool:
    return len(key) > 2 and key.startswith("_") and key.endswith("_")


def _walk(node: Any, path: str = ""):
    """(path, node) for every node of a plain tree, parents first; list items as `path[i]`."""
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


@functools.cache
def component_schemas() -> dict[str, dict[str | None, type]]:
    """Key path → {`_target_` → schema} of every node a paramgolf schema describes.

    Derived from `SCHEMAS` (group `quant/codec` is path `quant.codec`) and the components the
    schemas nest as defaults (`quant.calibration`, `train.averaging.ema`); `None` keys the
    settings schemas that have no `_target_` (the root, `train`, `quant`).
    """
    found: dict[str, dict[str | None, type]] = {}
    for group, entries in SCHEMAS.items():
        for _, schema in entries:
            structured = OmegaConf.structured(schema)
            for sub, node in _walk(OmegaConf.to_container(structured, throw_on_missing=False)):
                if isinstance(node, dict) and (sub == "" or "_target_" in node):
                    path = ".".join(p for p in (group.replace("/", "."), sub) if p)
                    nested = OmegaConf.get_type(OmegaConf.select(structured, sub)) if sub else schema
                    found.setdefault(path, {})[node.get("_target_")] = nested
    return found


@functools.cache
def schema_meta_keys() -> frozenset[str]:
    """The Hydra meta keys (`_target_`, `_partial_`) paramgolf's schemas use."""
    return frozenset(
        k for opts in component_schemas().values() for s in opts.values() for k in _fields(s) if _is_meta(k)
    )


@functools.cache
def _fields(schema: type) -> frozenset[str]:
    return frozenset(OmegaConf.structured(schema).keys())


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_components(cfg: dict[str, Any], source: str, at: str = "") -> None:
    """Refuse any node of a resolved config tree that is not one of paramgolf's schemas (see the module doc).

    `at`: where `cfg` sits in the whole config (`arch` for an artifact's architecture).
    """
    schemas, meta = component_schemas(), schema_meta_keys()
    nodes = [(path, node) for path, node in _walk(cfg, at) if isinstance(node, dict)]
    for path, node in nodes:  # first what could run code: meta keys and targets, wherever they are
        for key in node:
            if _is_meta(key) and key not in meta:
                raise UserError(
                    f"{source}: {path}.{key}: Hydra meta key {key} is not used by any paramgolf component; {REFUSED}"
                )
        target = node.get("_target_")
        options = schemas.get(path)
        if options is None and target is not None:
            raise UserError(
                f"{source}: {path}._target_={_short(target)}: no paramgolf component belongs at {path}; {REFUSED}"
            )
        if options is not None and (not isinstance(target, (str, type(None))) or target not in options):
            allowed = ", ".join(sorted(t for t in options if t)) or "none"
            raise UserError(
                f"{source}: {path or 'the root'}._target_={_short(target)} is not a paramgolf component "
                f"allowed there (allowed: {allowed}); {REFUSED}"
            )
    for path, node in nodes:  # then keys and types, as composing would check them
        if path not in schemas:
            continue
        schema = schemas[path][node.get("_target_")]
        unknown = sorted(set(node) - _fields(schema))
        if unknown:
            where = path or "the root"
            raise UserError(f"{source}: {where} has keys {unknown} that {schema.__name__} does not know; {REFUSED}")
        try:
            OmegaConf.merge(OmegaConf.structured(schema), node)
        except OmegaConfBaseException as exc:
            key = ".".join(p for p in (path, str(getattr(exc, "full_key", "") or "")) if p)
            raise UserError(f"{source}: {key}: {str(exc).splitlines()[0]}; {REFUSED}") from None


def _check_plain(raw: Any, source: str) -> None:
    """String keys only; `${` only as a whole-value reference to another key."""
    for path, node in _walk(raw):
        if isinstance(node, dict):
            bad = [k for k in node if not isinstance(k, str) or "${" in k]
            if bad:
                raise UserError(f"{source}: {path or 'the root'} has key {_short(bad[0])}; {REFUSED}")
        elif isinstance(node, str) and "${" in node and not REFERENCE.fullmatch(node):
            raise UserError(
                f"{source}: {path} = {_short(node)}: a saved config may only interpolate a plain reference to "
                f"another key (${{a.b}}), never a resolver or anything else; {REFUSED}"
            )


def _safe_yaml(path: Path) -> Any:
    text = path.read_text()
    try:
        if any(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise UserError(f"{path}: YAML aliases (*name) are not allowed in a saved config; {REFUSED}")
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path} is not valid YAML ({str(exc).splitlines()[0]}); {REFUSED}") from None


def load_saved_config(path: Path) -> dict[str, Any]:
    """A run's `.hydra/config.yaml` as a plain, resolved, checked dict; nothing in it is instantiated."""
    path = Path(path)
    raw = _safe_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path} does not hold a config mapping; {REFUSED}")
    _check_plain(raw, str(path))
    try:
        cfg = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)  # references only (checked above)
    except OmegaConfBaseException as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0]}; {REFUSED}") from None
    check_components(cfg, str(path))
    return cfg


def load_saved_overrides(path: Path) -> list[str]:
    """A run's `.hydra/overrides.yaml`: `key=value` overrides of the config tree, nothing else."""
    path = Path(path)
    raw = _safe_yaml(path)
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(o, str) for o in raw):
        raise UserError(f"{path} does not hold a list of override strings; {REFUSED}")
    for o in raw:
        key = o.split("=", 1)[0]
        if "=" not in o or not OVERRIDE_KEY.fullmatch(key) or key.split(".")[0].split("/")[0] == "hydra" or "${" in o:
            raise UserError(
                f"{path}: override {_short(o)} is refused: a saved run may only hold key=value overrides of the "
                f"config tree (no hydra.*, +, ++, ~, @package or ${{...}}); {REFUSED}"
            )
    return raw
