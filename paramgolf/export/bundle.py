"""The generated `train_gpt.py`: one self-contained file holding exactly the code a configuration runs.

`generate_script(config)` starts from the run's entry (paramgolf.export.standalone.main) and the
config's `_target_`s and keeps, module by module, only the top-level definitions they reach
(through names, imports and `module.attr` references), then strips what never runs: docstrings,
annotations (class fields keep a placeholder, ClassVar/InitVar keep theirs), `if TYPE_CHECKING:`
blocks, imports left unused. The kept modules are packed into one lzma-compressed, base85-encoded
archive behind a small loader that serves them to `import` under their own names, so the code runs
unchanged (the same math as the paramgolf run) without paramgolf, Hydra or W&B installed.

Its size is the run's `code_bytes`: what a record submission of this configuration would count.
"""

from __future__ import annotations

import ast
import base64
import json
import lzma
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from paramgolf.errors import UserError
from paramgolf.quant.accounting import module_file

PACKAGE = "paramgolf"
ENTRY = ("paramgolf.export.standalone", "main")
# Third-party packages the generated script may import when a module is loaded (requirements.txt).
ALLOWED = {"torch", "numpy", "sentencepiece", "safetensors", "zstandard", "brotli"}
# The optional kernels (paramgolf.model.kernels.triton_*) import Triton; they load only when a kernel runs on
# CUDA. Their bytes count; a script that runs them also needs their source kept verbatim (Triton's jit reads
# it with inspect.getsource, and its `tl.constexpr` annotations), which this bundler does not do yet.
ALLOWED |= {"triton"}
# Packages it must never reach, even lazily: the point of the export is to run without them.
FORBIDDEN = {"hydra", "omegaconf", "wandb", "paramgolf_private"}
# Config groups the script does not run (the logger) or reads as plain values (data paths).
DROPPED_KEYS = ("logger", "hydra", "budget_check", "name")
DROPPED_TRAIN_KEYS = ("progress", "resume", "checkpoint_every_steps", "checkpoint_every_s", "checkpoint_keep",
                      "expected_steps", "nproc_per_node")  # fmt: skip

STUB = """import lzma,base64,sys,json,importlib.util as u
A=lzma.decompress(base64.b85decode("{blob}")).decode().split("\\n#@")
C=json.loads(A[0]);M=dict(a.split("\\n",1)for a in A[1:])
class L:
 def find_spec(s,n,p,t=None):
  if n in M:return u.spec_from_loader(n,s,is_package=any(k.startswith(n+".")for k in M))
  if n.split(".")[0]=="{package}":raise ImportError(n+" is not part of this script")
 def create_module(s,p):0
 def exec_module(s,m):exec(compile(M[m.__name__],m.__name__,"exec"),m.__dict__)
sys.meta_path.insert(0,L())
if __name__=="__main__":__import__("{entry}",fromlist=["_"]).{func}(C,script=__file__)
"""


class BundleError(UserError):
    """The configuration's code cannot be exported as a standalone script (the message says why)."""


# ---------------------------------------------------------------------------------------------- parsing


@dataclass
class _Stmt:
    node: ast.stmt
    defines: set[str]
    always: bool  # kept whenever its module is (side effects, compound statements)
    kept: bool = False


@dataclass
class _Module:
    name: str
    is_package: bool
    stmts: list[_Stmt]
    bindings: dict[str, tuple[str, str | None]] = field(default_factory=dict)  # name -> (module, attr | None)
    needed: bool = False


def _is_module(name: str) -> bool:
    return module_file(name, PACKAGE) is not None


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    anchor = module.split(".") if is_package else module.split(".")[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _import_bindings(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> dict[str, tuple]:
    """The names an import statement binds: name -> (module, None) or (module, attribute)."""
    out: dict[str, tuple[str, str | None]] = {}
    if isinstance(node, ast.Import):
        for a in node.names:
            if a.asname:
                out[a.asname] = (a.name, None)
            else:
                out[a.name.split(".")[0]] = (a.name.split(".")[0], None)
        return out
    base = _absolute(module, is_package, node)
    for a in node.names:
        if a.name == "*":
            raise BundleError(f"{module}: `from {base} import *` cannot be exported (name the imports)")
        sub = f"{base}.{a.name}"
        out[a.asname or a.name] = (sub, None) if sub.split(".")[0] == PACKAGE and _is_module(sub) else (base, a.name)
    return out


def _is_type_checking(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def _target_names(targets: Iterable[ast.expr]) -> set[str] | None:
    """Names assigned by simple targets; None when a target is an attribute or subscript (a side effect)."""
    names: set[str] = set()
    for t in targets:
        if isinstance(t, ast.Name):
            names.add(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            inner = _target_names(t.elts)
            if inner is None:
                return None
            names |= inner
        else:
            return None
    return names


def _parse(name: str) -> _Module:
    path = module_file(name, PACKAGE)
    tree = ast.parse(path.read_bytes(), filename=str(path))
    mod = _Module(name, path.name == "__init__.py", [])
    for node in tree.body:
        if _is_docstring(node) or _is_type_checking(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            mod.stmts.append(_Stmt(node, {node.name}, False))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            b = _import_bindings(name, mod.is_package, node)
            mod.bindings.update(b)
            mod.stmts.append(_Stmt(node, set(b), False))
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = _target_names(targets)
            if isinstance(node, ast.AnnAssign) and node.value is None:
                continue  # a bare declaration
            mod.stmts.append(_Stmt(node, names or set(), names is None))
        else:
            mod.stmts.append(_Stmt(node, set(), True))
    return mod


# ---------------------------------------------------------------------------------------------- reachability


def _imports(node: ast.AST) -> Iterable[ast.Import | ast.ImportFrom]:
    for n in ast.walk(node):
        if isinstance(n, ast.Import) or (isinstance(n, ast.ImportFrom) and n.module != "__future__"):
            yield n


def _refs(node: ast.AST, mod: _Module) -> tuple[set[str], set[tuple[str, str | None]]]:
    """(names, external (module, attr) symbols) that `node` refers to; over-approximated, never missed."""
    bindings = dict(mod.bindings)
    ext: set[tuple[str, str | None]] = set()
    for n in _imports(node):  # imports inside functions bind names too
        b = _import_bindings(mod.name, mod.is_package, n)
        bindings.update(b)
        ext.update(b.values())
    local: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            local.add(n.id)
            if n.id in bindings:
                ext.add(bindings[n.id])
        elif isinstance(n, ast.Attribute):
            chain, base = [], n
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if not (isinstance(base, ast.Name) and base.id in bindings and bindings[base.id][1] is None):
                continue
            target = bindings[base.id][0]
            for attr in reversed(chain):  # follow submodules: a.b.c.X
                sub = f"{target}.{attr}"
                if sub.split(".")[0] == PACKAGE and _is_module(sub):
                    ext.add((sub, None))
                    target = sub
                else:
                    ext.add((target, attr))
                    break
    return local, ext


def _framework_names() -> set[str]:
    """Method names torch and Python call on our classes themselves (forward, step, __init__…): always kept."""
    import torch

    names = set(dir(object)) | {"forward"}
    for base in (torch.nn.Module, torch.optim.Optimizer, torch.autograd.Function):
        names |= set(dir(base))
    return names


def _methods(cls: ast.ClassDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    return [n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _attribute_names(node: ast.AST) -> set[str]:
    """Attribute names `node` uses, and identifier-like strings (getattr(x, "name"), hasattr…)."""
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Attribute):
            out.add(n.attr)
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value.isidentifier():
            out.add(n.value)
    return out


class _Shaker:
    """Reachability from the roots: top-level statements by name, methods by the attribute names used."""

    def __init__(self) -> None:
        self.modules: dict[str, _Module] = {}
        self.todo: list[tuple[str, str | None]] = []
        self.framework = _framework_names()
        self.attrs: set[str] = set()  # attribute names some kept code uses
        self.pending: dict[str, list[tuple[_Module, ast.AST]]] = {}  # method name -> methods not kept yet
        self.kept_methods: set[int] = set()  # id() of the kept method nodes

    def module(self, name: str) -> _Module:
        if name not in self.modules:
            self.modules[name] = _parse(name)
        return self.modules[name]

    def need(self, module: str, attr: str | None) -> None:
        if module.split(".")[0] == PACKAGE:
            self.todo.append((module, attr))

    def _use(self, mod: _Module, node: ast.AST) -> None:
        """`node` is kept: what it refers to is needed, and the methods its attribute names name."""
        local, ext = _refs(node, mod)
        for name in local:
            self.todo.append((mod.name, name))
        for sym in ext:
            self.need(*sym)
        for name in _attribute_names(node) - self.attrs:
            self.attrs.add(name)
            for owner, fn in self.pending.pop(name, ()):
                self._keep_method(owner, fn)

    def _keep_method(self, mod: _Module, fn: ast.AST) -> None:
        self.kept_methods.add(id(fn))
        self._use(mod, fn)

    def _keep(self, mod: _Module, stmt: _Stmt) -> None:
        if stmt.kept:
            return
        stmt.kept = True
        node = stmt.node
        if not isinstance(node, ast.ClassDef):
            self._use(mod, node)
            return
        methods = _methods(node)
        shell = ast.ClassDef(
            name=node.name,
            bases=node.bases,
            keywords=node.keywords,
            body=[n for n in node.body if n not in methods] + [d for m in methods for d in m.decorator_list],
            decorator_list=node.decorator_list,
        )  # the class without its methods' bodies
        self._use(mod, shell)
        in_body = {n.id for n in ast.walk(shell) if isinstance(n, ast.Name)}  # `alias = method` in the class body
        for fn in methods:
            dunder = fn.name.startswith("__") and fn.name.endswith("__")
            if dunder or fn.name in self.framework or fn.name in self.attrs or fn.name in in_body:
                self._keep_method(mod, fn)
            else:
                self.pending.setdefault(fn.name, []).append((mod, fn))

    def run(self) -> dict[str, _Module]:
        while self.todo:
            name, attr = self.todo.pop()
            if not _is_module(name):
                continue  # `from paramgolf.x import Class` resolved to (paramgolf.x, Class) already
            mod = self.module(name)
            if not mod.needed:
                mod.needed = True
                parts = name.split(".")
                for i in range(1, len(parts)):
                    self.todo.append((".".join(parts[:i]), None))  # parent packages run on import
                for stmt in mod.stmts:
                    if stmt.always:
                        self._keep(mod, stmt)
            if attr is None:
                continue
            for stmt in mod.stmts:
                if attr in stmt.defines and not isinstance(stmt.node, (ast.Import, ast.ImportFrom)):
                    self._keep(mod, stmt)
            if attr in mod.bindings:  # a name this module re-exports from another
                for stmt in mod.stmts:
                    if attr in stmt.defines and isinstance(stmt.node, (ast.Import, ast.ImportFrom)):
                        stmt.kept = True
                self.need(*mod.bindings[attr])
        return {n: m for n, m in self.modules.items() if m.needed}


def _targets(node: Any) -> Iterable[str]:
    if isinstance(node, Mapping):
        if isinstance(node.get("_target_"), str):
            yield node["_target_"]
        for v in node.values():
            yield from _targets(v)
    elif isinstance(node, list):
        for v in node:
            yield from _targets(v)


# ---------------------------------------------------------------------------------------------- stripping


class _Strip(ast.NodeTransformer):
    """Drop what never runs: docstrings, annotations, TYPE_CHECKING blocks (class fields keep a placeholder)."""

    def __init__(self, module: str = "") -> None:
        self.in_class = [False]
        self.module = module

    def visit_Raise(self, node: ast.Raise) -> ast.Raise:
        """An error's message becomes where it is raised (`paramgolf.x:line`: look it up in paramgolf's source).

        The script runs one fixed configuration; its own entry keeps its messages (data paths).
        """
        if isinstance(node.exc, ast.Call) and node.exc.args and self.module != ENTRY[0]:
            node.exc.args = [ast.Constant(f"{self.module}:{node.lineno}")]
        return node

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        node.msg = None
        return node

    def _body(self, body: list[ast.stmt], empty_ok: bool = False) -> list[ast.stmt]:
        out = []
        for s in body:
            if _is_docstring(s) or _is_type_checking(s):
                continue
            r = self.visit(s)
            if r is not None:
                out.append(r)
        return out if out or empty_ok else [ast.Pass()]

    def _function(self, node):
        node.returns = None
        args = node.args
        for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
            if a is not None:
                a.annotation = None
        node.decorator_list = [self.visit(d) for d in node.decorator_list]
        self.in_class.append(False)
        node.body = self._body(node.body)
        self.in_class.pop()
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.ClassDef:
        self.in_class.append(True)
        node.body = self._body(node.body)
        self.in_class.pop()
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign):
        if self.in_class[-1]:
            names = {n.id for n in ast.walk(node.annotation) if isinstance(n, ast.Name)}
            names |= {n.attr for n in ast.walk(node.annotation) if isinstance(n, ast.Attribute)}
            if not names & {"ClassVar", "InitVar"}:
                node.annotation = ast.Constant(0)  # a dataclass / NamedTuple field: the name matters, not the type
            return node
        if node.value is None:
            return None
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)

    def generic_visit(self, node: ast.AST) -> ast.AST:
        for name, value in ast.iter_fields(node):
            if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
                setattr(node, name, self._body(value, empty_ok=name in ("orelse", "finalbody")))
            elif isinstance(value, list):
                setattr(node, name, [self.visit(v) if isinstance(v, ast.AST) else v for v in value])
            elif isinstance(value, ast.AST):
                setattr(node, name, self.visit(value))
        return node


_DYNAMIC = {"locals", "vars", "eval", "exec", "globals"}


def _fresh_names(taken: set[str]) -> Iterable[str]:
    import builtins
    import itertools
    import keyword
    import string

    reserved = taken | set(dir(builtins)) | set(keyword.kwlist) | set(keyword.softkwlist)
    letters = string.ascii_letters
    for size in itertools.count(1):
        for chars in itertools.product(letters, repeat=size):
            name = "".join(chars)
            if name not in reserved:
                yield name


def _shorten_locals(tree: ast.Module) -> None:
    """Rename each function's own local variables to short fresh names (parameters, globals, names bound in
    nested classes or nested functions' parameters keep theirs); consistent within the function, so the
    code computes exactly the same."""
    taken = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)
    }
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        if any(isinstance(n, ast.Name) and n.id in _DYNAMIC for n in ast.walk(fn)):
            continue
        keep = {a.arg for a in ast.walk(fn.args) if isinstance(a, ast.arg)}
        bound: set[str] = set()
        for n in ast.walk(fn):
            if n is not fn and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                keep |= {a.arg for a in ast.walk(n.args) if isinstance(a, ast.arg)}
                if not isinstance(n, ast.Lambda):
                    keep.add(n.name)
            elif isinstance(n, (ast.Global, ast.Nonlocal)):
                keep |= set(n.names)
            elif isinstance(n, ast.ClassDef):
                keep.add(n.name)
                keep |= {t.id for s in n.body for t in ast.walk(s) if isinstance(t, ast.Name)}
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                keep |= {(a.asname or a.name).split(".")[0] for a in n.names}
            elif isinstance(n, ast.ExceptHandler) and n.name:
                keep.add(n.name)
            elif isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del)):
                bound.add(n.id)
        names = sorted(bound - keep)
        if not names:
            continue
        fresh = _fresh_names(taken)
        mapping = {}
        for old in names:
            new = next(fresh)
            if len(new) < len(old):
                mapping[old] = new
                taken.add(new)
        for n in ast.walk(fn):
            if isinstance(n, ast.Name) and n.id in mapping:
                n.id = mapping[n.id]


def _prune_imports(stmts: list[ast.stmt]) -> list[ast.stmt]:
    """Module-level imports whose names nothing kept refers to are dropped (after annotations went)."""
    used = set()
    for s in stmts:
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            continue
        for n in ast.walk(s):
            if isinstance(n, ast.Name):
                used.add(n.id)
    out = []
    for s in stmts:
        if isinstance(s, (ast.Import, ast.ImportFrom)):
            keep = [a for a in s.names if (a.asname or a.name.split(".")[0]) in used]
            if not keep:
                continue
            s.names = keep
        out.append(s)
    return out


def _check_imports(mod: _Module, stmts: list[ast.stmt]) -> None:
    stdlib = set(sys.stdlib_module_names)
    for s in stmts:
        eager = isinstance(s, (ast.Import, ast.ImportFrom))
        for n in ast.walk(s):
            if not isinstance(n, (ast.Import, ast.ImportFrom)):
                continue
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
            for full in names:
                top = full.split(".")[0]
                if getattr(n, "level", 0) or top in (PACKAGE, "__future__") or top in stdlib:
                    continue
                if top in FORBIDDEN:
                    raise BundleError(
                        f"{mod.name}: the exported script would import {full!r}; "
                        "the code this configuration runs must not need it"
                    )
                if eager and n is s and top not in ALLOWED:
                    raise BundleError(
                        f"{mod.name}: imports {full!r} when loaded; the exported script allows only "
                        f"{', '.join(sorted(ALLOWED))} besides the standard library"
                    )


def _source(mod: _Module, kept_methods: set[int]) -> str:
    stmts = [s.node for s in mod.stmts if s.kept]
    for node in stmts:
        if isinstance(node, ast.ClassDef):
            node.body = [n for n in node.body if n not in _methods(node) or id(n) in kept_methods] or [ast.Pass()]
    stmts = [_Strip(mod.name).visit(s) for s in stmts]
    stmts = [s for s in stmts if s is not None]
    stmts = _prune_imports(stmts)
    _check_imports(mod, stmts)
    tree = ast.Module(body=stmts, type_ignores=[])
    _shorten_locals(tree)
    ast.fix_missing_locations(tree)
    text = ast.unparse(tree)
    lines = []
    for line in text.splitlines():  # ast.unparse indents by 4 and never breaks a statement across lines
        stripped = line.lstrip(" ")
        lines.append(" " * ((len(line) - len(stripped)) // 4) + stripped)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- the script


def script_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the generated script embeds: the resolved config less what it does not run."""
    c = {k: v for k, v in config.items() if k not in DROPPED_KEYS}
    c["data"] = {k: v for k, v in dict(c.get("data", {})).items() if k != "_target_"}
    c["train"] = {k: v for k, v in dict(c["train"]).items() if k not in DROPPED_TRAIN_KEYS}
    return json.loads(json.dumps(c))


def module_sources(config: Mapping[str, Any]) -> dict[str, str]:
    """The kept source of every module the configuration's script runs, by module name."""
    shaker = _Shaker()
    shaker.need(*ENTRY)
    for target in _targets({k: v for k, v in config.items() if k not in ("data", *DROPPED_KEYS)}):
        module, _, name = target.rpartition(".")
        if not target.startswith(PACKAGE + ".") or not _is_module(module):
            raise BundleError(f"_target_ {target!r} is not a {PACKAGE} component; it cannot be exported")
        shaker.need(module, name)
    kept = shaker.run()
    return {name: _source(mod, shaker.kept_methods) for name, mod in sorted(kept.items())}


def generate_script(config: Mapping[str, Any]) -> bytes:
    """The self-contained `train_gpt.py` for a resolved config (deterministic: the same config, the same bytes)."""
    sources = module_sources(config)
    archive = json.dumps(script_config(config), separators=(",", ":"))  # key order kept: the artifact embeds it
    archive += "".join(f"\n#@{name}\n{src}" for name, src in sources.items())
    blob = base64.b85encode(lzma.compress(archive.encode(), preset=9 | lzma.PRESET_EXTREME)).decode()
    entry, func = ENTRY
    return STUB.format(blob=blob, package=PACKAGE, entry=entry, func=func).encode()


def script_bytes(config: Mapping[str, Any]) -> int:
    """`code_bytes`: the size of the script a record submission of this configuration would ship."""
    return len(generate_script(config))
