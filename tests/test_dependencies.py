"""Installs that last: no private name of another package is used, every direct dependency has a tested range, and
the lock, ``conda.yaml`` and the served model's requirements agree with ``pyproject.toml``."""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

from conftest import script_module

REPO = Path(__file__).resolve().parents[1]
OWN = {"wbc", "tests", "benchmarks", "entrypoints", "conftest", "generate_tables"}
SOURCES = [path for folder in ("wbc", "entrypoints", "benchmarks", "tests", "docs", ".ci") for path in (REPO / folder).rglob("*.py")]


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _third_party(module: str) -> bool:
    top = module.split(".")[0]
    return top not in OWN and top not in sys.stdlib_module_names and not top.startswith("_")


def private_names(source: str) -> list[tuple[int, str]]:
    """(line, dotted name) for each private name of a third-party package that ``source`` imports or reaches as an
    attribute of a name it imported from one (``torch.nn.modules.batchnorm._BatchNorm``)."""
    tree = ast.parse(source)
    bound, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name):
                    bound.add(alias.asname or alias.name.split(".")[0])
                    if any(_private(part) for part in alias.name.split(".")):
                        found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _third_party(node.module):
            for alias in node.names:
                bound.add(alias.asname or alias.name)
                if any(_private(part) for part in node.module.split(".")) or _private(alias.name):
                    found.append((node.lineno, f"{node.module}.{alias.name}"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                found.append((node.lineno, ast.unparse(node)))
    return found


def test_the_private_name_check_finds_what_it_should():
    source = ("import torch\nfrom torch import nn\nfrom mlflow.utils.validation import _validate_alias_name\n"
              "import mlflow._private\nfrom wbc._io import write_text\nimport os\nos._exit\n"
              "x = nn.modules.batchnorm._BatchNorm\ny = torch.nn.BatchNorm2d\nz = obj._cache\n")
    assert [name for _, name in private_names(source)] == [
        "mlflow.utils.validation._validate_alias_name", "mlflow._private", "nn.modules.batchnorm._BatchNorm"]


def test_no_private_name_of_another_package_is_used():
    found = [f"{path.relative_to(REPO)}:{line}: {name}" for path in SOURCES for line, name in private_names(path.read_text())]
    assert not found, ("private names of other packages break on their next release; use their public API or a few "
                       "lines of wbc's own:\n" + "\n".join(found))


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    requirements = {}
    for text in listed:
        requirement = Requirement(text)
        if requirement.specifier or requirement.name not in requirements:
            requirements[_normal(requirement.name)] = requirement
    return requirements


_lockfile = script_module(REPO / ".ci" / "lockfile.py")  # the one parser of requirements.lock
_normal, _lock = _lockfile.normal, _lockfile.locked


def test_every_direct_dependency_has_a_lower_and_an_upper_bound():
    loose = [str(r) for r in _pyproject_requirements().values()
             if not any(s.operator in (">=", ">", "==", "~=") for s in r.specifier)
             or not any(s.operator in ("<", "<=", "==", "~=") for s in r.specifier)]
    assert not loose, f"pyproject.toml: give each of these a tested range (>=low,<high): {loose}"


def test_the_lock_pins_every_direct_dependency_within_its_range():
    pins = _lock()
    for name, requirement in _pyproject_requirements().items():
        assert name in pins, f"requirements.lock misses {name}: run bash .ci/lock"
        for version in pins[name]:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"requirements.lock pins {name}=={version}, outside pyproject.toml's {requirement}: run bash .ci/lock")


def test_conda_yaml_pins_what_the_lock_pins():
    conda = yaml.safe_load((REPO / "conda.yaml").read_text())
    pip = next(entry["pip"] for entry in conda["dependencies"] if isinstance(entry, dict))
    pins = _lock()
    python = next(entry for entry in conda["dependencies"] if isinstance(entry, str) and entry.startswith("python="))
    for line in pip:
        if line.startswith("-e"):
            continue
        name, equals, version = line.partition("==")
        assert equals, f"conda.yaml: {line!r} is not pinned: run bash .ci/lock"
        assert version in pins.get(_normal(name), ()), (
            f"conda.yaml pins {line}, requirements.lock {sorted(pins.get(_normal(name), []))}: run bash .ci/lock")
    named = {_normal(line.partition("==")[0]) for line in pip if not line.startswith("-e")}
    assert set(_pyproject_requirements()) - {"pytest", "pytest-timeout", "pytest-xdist", "requests", "psycopg2-binary",
                                              "selenium", "uv"} <= named, "conda.yaml misses a dependency: run bash .ci/lock"
    assert python == "python=3.11", "conda.yaml's Python is the one the lock was made for"


def test_the_served_models_requirements_lie_in_the_projects_ranges(tmp_path):
    from wbc.serving.pyfunc import ONNX_PACKAGES, SERVED_PACKAGES, TORCH_PACKAGES

    ranges = _pyproject_requirements()
    ranges["mlflow-skinny"] = ranges["mlflow"]
    for package in SERVED_PACKAGES + ONNX_PACKAGES + TORCH_PACKAGES:
        installed = importlib.metadata.version(package)
        if _normal(package) in ranges:
            assert ranges[_normal(package)].specifier.contains(installed, prereleases=True), (
                f"{package} {installed} is installed, outside pyproject.toml's range {ranges[_normal(package)]}")
