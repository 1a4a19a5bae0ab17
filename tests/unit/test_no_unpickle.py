"""No node code unpickles: nodes exchange bytes and metadata, never Python objects.

A node that unpickled bytes from a peer, a spill file or a client would run
whatever code those bytes name.  This scan reads every module of the node's
packages (and ``objstore/auth.py``) and fails on any use of an unpickling
entry point: ``pickle.loads``/``load``/``Unpickler`` (and ``_pickle``,
``cloudpickle``, ``dill``, ``marshal``, ``shelve``, ``jsonpickle``),
``objstore.serialization.deserialize``, or the client (whose ``get``
unpickles), however it is imported or aliased, and any import of those
modules at all.  The dynamic counterpart runs real nodes under an audit hook
(``tests/integration/test_security_local.py``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "objstore"
SCANNED = [ROOT / p for p in ("node", "plasma", "transfer", "spill", "directory", "auth.py")]

# Modules whose import alone is refused in node code: nothing there but (un)pickling.
UNPICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "marshal", "shelve"}
UNPICKLING_MODULES |= {"jsonpickle", "joblib", "pickletools"}
# Names that unpickle (or hand out values a client unpickled), by their full name.
UNPICKLING_NAMES = {
    f"{m}.{n}" for m in UNPICKLING_MODULES for n in ("loads", "load", "Unpickler", "decode", "open")
}
UNPICKLING_NAMES |= {
    "objstore.serialization.deserialize",
    "objstore.client",
    "objstore.client.Client",
    "objstore.connect",
    "objstore.Client",
    "numpy.load",  # allow_pickle=True loads pickles
    "pandas.read_pickle",
}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _refused(name: str) -> bool:
    if name in UNPICKLING_NAMES or name.split(".")[0] in UNPICKLING_MODULES:
        return True
    return any(name.startswith(n + ".") for n in UNPICKLING_NAMES)


class _Scanner(ast.NodeVisitor):
    """Resolves names through the module's imports and reports refused ones."""

    def __init__(self, path: str, package: str) -> None:
        self.path = path
        self.package = package  # for relative imports
        self.aliases: dict[str, str] = {}
        self.found: list[Finding] = []

    def _report(self, node: ast.AST, what: str) -> None:
        self.found.append(Finding(self.path, getattr(node, "lineno", 0), what))

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            local = a.asname or a.name.split(".")[0]
            self.aliases[local] = a.name if a.asname else a.name.split(".")[0]
            if _refused(a.name):
                self._report(node, f"import {a.name}")

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")[: len(self.package.split(".")) - node.level + 1]
            base = ".".join([*parts, base] if base else parts)
        for a in node.names:
            full = f"{base}.{a.name}"
            self.aliases[a.asname or a.name] = full
            if _refused(full) or _refused(base):
                self._report(node, f"from {base} import {a.name}")

    def _qualname(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._qualname(node.value)
            return None if base is None else f"{base}.{node.attr}"
        return None

    def visit_Attribute(self, node: ast.Attribute) -> None:
        name = self._qualname(node)
        if name is not None and _refused(name):
            self._report(node, f"uses {name}")
            return  # one finding per expression
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        name = self.aliases.get(node.id)
        if name is not None and _refused(name) and isinstance(node.ctx, ast.Load):
            self._report(node, f"uses {name}")

    def visit_Call(self, node: ast.Call) -> None:
        # __import__("pickle"), importlib.import_module("pickle")
        func = self._qualname(node.func) or (
            node.func.id if isinstance(node.func, ast.Name) else None
        )
        if func in ("__import__", "importlib.import_module") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _refused(arg.value):
                self._report(node, f"imports {arg.value} dynamically")
        # getattr(pickle, "loads")
        if func == "getattr" and len(node.args) >= 2:
            base = self._qualname(node.args[0])
            arg = node.args[1]
            if (
                base
                and isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and _refused(f"{base}.{arg.value}")
            ):
                self._report(node, f"uses {base}.{arg.value}")
        self.generic_visit(node)


def scan_source(
    source: str, path: str = "<snippet>", package: str = "objstore.node"
) -> list[Finding]:
    """Every use of an unpickling entry point in ``source``."""
    scanner = _Scanner(path, package)
    scanner.visit(ast.parse(source, path))
    return scanner.found


def _files() -> list[Path]:
    out: list[Path] = []
    for p in SCANNED:
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _package_of(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts if path.name == "__init__.py" else parts[:-1])


def test_node_code_never_unpickles() -> None:
    files = _files()
    assert len(files) > 30, files  # the packages are where this test thinks they are
    found = []
    for f in files:
        found += scan_source(f.read_text(), str(f.relative_to(ROOT.parent)), _package_of(f))
    assert not found, "node code must not unpickle:\n" + "\n".join(map(str, found))


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle\nx = pickle.loads(b'')",
        "import pickle as p\np.load(f)",
        "from pickle import loads\nloads(b'')",
        "from pickle import Unpickler as U\nU(f).load()",
        "import _pickle\n_pickle.loads(b'')",
        "import marshal\nmarshal.loads(b'')",
        "from objstore.serialization import deserialize\ndeserialize(m, b)",
        "from objstore import serialization\nserialization.deserialize(m, b)",
        "import objstore.serialization\nobjstore.serialization.deserialize(m, b)",
        "from ..serialization import deserialize as d\nd(m, b)",
        "from objstore.client import Client",
        "import objstore\nasync def f():\n    async with objstore.connect() as c:\n        pass",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import importlib\nm = importlib.import_module('pickle')",
        "m = __import__('pickle')",
        "import pickle\nf = getattr(pickle, 'loads')",
    ],
)
def test_the_scanner_finds_unpickling(snippet: str) -> None:
    assert scan_source(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "import json\njson.loads(b'{}')",
        "from objstore.serialization import PICKLE5\nx = PICKLE5",  # a metadata tag is bytes
        "import numpy as np\nnp.frombuffer(b, np.uint8)",
        "def loads(b):\n    return b\nloads(b'')",  # a local name that only sounds alike
        "from objstore.protocol import pb\npb.Hello.FromString(b'')",
    ],
)
def test_the_scanner_lets_bytes_and_protobuf_through(snippet: str) -> None:
    assert scan_source(snippet) == []
