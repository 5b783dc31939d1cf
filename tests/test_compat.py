"""trainer.compat: every private library member the project uses still exists in the installed libraries, and no
file of src/ but compat.py reaches one."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest

from trainer import compat
from trainer.compat import PRIVATE_MEMBERS, TESTED_VERSIONS, PrivateMember

SRC = Path(__file__).resolve().parents[1] / "src"
LIBRARIES = (
    "torch",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "torchmetrics",
    "timm",
    "hydra",
    "omegaconf",
    "ffcv",
    "numba",
)
# private names of the standard library that src/ may use
STDLIB_PRIVATE = {"_exit"}


def _where(member: PrivateMember) -> str:
    return (
        f"{member.path} ({member.library} {version(member.library)} installed, "
        f"{TESTED_VERSIONS[member.library]} tested; used in {member.used_in}: {member.why})"
    )


def _in_source(cls: type, attribute: str) -> bool:
    """Whether `attribute` is a class attribute of `cls` or assigned as `self.<attribute>` in it or a base."""
    if hasattr(cls, attribute):
        return True
    pattern = re.compile(rf"\bself\.{re.escape(attribute)}\b\s*(:[^=\n]*)?=[^=]")
    for klass in inspect.getmro(cls):
        try:
            if pattern.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):  # builtins
            continue
    return False


@pytest.mark.unit
@pytest.mark.parametrize("member", PRIVATE_MEMBERS, ids=lambda m: m.path)
def test_private_member_exists(member: PrivateMember) -> None:
    if member.library in ("ffcv", "numba") and importlib.util.find_spec("ffcv") is None:
        pytest.skip("ffcv is not installed (the ffcv extra)")
    module_name, attributes = member.path.split(":")
    *path, last = attributes.split(".")
    try:
        target = importlib.import_module(module_name)
        for name in path:
            target = getattr(target, name)
    except (ImportError, AttributeError) as exc:
        pytest.fail(f"gone: {_where(member)}: {exc}")
    found = _in_source(target, last) if member.instance else hasattr(target, last)
    assert found, f"gone: {_where(member)}"


@pytest.mark.unit
def test_tested_versions_cover_the_libraries() -> None:
    assert {m.library for m in PRIVATE_MEMBERS} <= set(TESTED_VERSIONS)


@pytest.mark.unit
def test_versions_bounded_and_pinned() -> None:
    """Each library with private members used has an upper bound in pyproject.toml and its tested version pinned in
    constraints.txt (what scripts/setup.sh installs)."""
    tomllib = pytest.importorskip("tomllib")
    root = SRC.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    requirements = [
        *project["dependencies"],
        *(r for extra in project["optional-dependencies"].values() for r in extra),
    ]
    pins = dict(line.split("==", 1) for line in (root / "constraints.txt").read_text().splitlines() if "==" in line)
    for library, tested in TESTED_VERSIONS.items():
        bounds = [r for r in requirements if re.match(rf"{re.escape(library)}\s*[<>=!~]", r)]
        assert bounds and all("<" in r for r in bounds), f"pyproject.toml: {library} needs an upper bound ({bounds})"
        assert pins.get(library) == tested, f"constraints.txt pins {library}=={pins.get(library)}, tested {tested}"


def _own_private_names() -> set[str]:
    """Every `_name` src/ defines itself: functions, classes, module names, attributes it assigns, import aliases."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.alias) and node.asname:
                names.add(node.asname)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
    return {n for n in names if n.startswith("_")}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _library_module(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


@pytest.mark.unit
def test_private_members_only_in_compat() -> None:
    own = _own_private_names() | STDLIB_PRIVATE
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "trainer" / "compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            where = f"{path.relative_to(SRC)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.ImportFrom) and node.module and _library_module(node.module):
                if any(_is_private(part) for part in node.module.split(".")):
                    found.append(f"{where}: from {node.module} import ...")
                found += [f"{where}: {node.module}.{a.name}" for a in node.names if _is_private(a.name)]
            elif isinstance(node, ast.Import):
                found += [
                    f"{where}: import {a.name}"
                    for a in node.names
                    if _library_module(a.name) and any(_is_private(p) for p in a.name.split("."))
                ]
            elif isinstance(node, ast.Attribute) and _is_private(node.attr) and node.attr not in own:
                found.append(f"{where}: .{node.attr}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr")
                and len(node.args) > 1
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and _is_private(node.args[1].value)
                and node.args[1].value not in own
            ):
                found.append(f"{where}: {node.func.id}(..., {node.args[1].value!r})")
    assert not found, "private library members outside trainer/compat.py (add them there):\n" + "\n".join(found)


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def _library_bases(cls: type) -> list[type]:
    return [base for base in inspect.getmro(cls)[1:] if base.__module__.split(".")[0] in LIBRARIES]


@pytest.mark.unit
def test_no_inherited_private_members_outside_compat() -> None:
    """Our subclasses of library classes neither override nor use (`self._name`) a private member of their bases."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "trainer" / "compat.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        classes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.bases]
        if not classes:
            continue
        if "ffcv" in path.parts and importlib.util.find_spec("ffcv") is None:
            continue
        module = importlib.import_module(_module_name(path))
        for node in classes:
            bases = _library_bases(getattr(module, node.name))
            names = {
                n.attr
                for n in ast.walk(node)
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "self"
            }
            names |= {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            for name in sorted(filter(_is_private, names)):
                owner = next((b for b in bases if _in_source(b, name)), None)
                if owner is not None:
                    found.append(f"{path.relative_to(SRC)}: {node.name}.{name} ({owner.__module__}.{owner.__name__})")
    assert not found, "private members of library base classes outside trainer/compat.py:\n" + "\n".join(found)


@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(compat._LAZY))
def test_lazy_members_resolve(name: str) -> None:
    if compat._LAZY[name].startswith("ffcv") and importlib.util.find_spec("ffcv") is None:
        pytest.skip("ffcv is not installed (the ffcv extra)")
    assert getattr(compat, name) is not None
