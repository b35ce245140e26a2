"""The documentation cannot drift: generated tables match the command line and MLproject, and every path,
link, command, option and entry point that README.md and docs/*.md name exists. No training, no network."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from conftest import script_module
from wbc.cli import cli

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IDS = [str(path.relative_to(REPO)) for path in DOCUMENTS]


GENERATOR = script_module(REPO / "docs" / "generate_tables.py")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _without_generated(text: str) -> str:
    return GENERATOR.BLOCK.sub("", text)


def _code(text: str) -> list[str]:
    """The code of a page: each line of its fenced blocks, and each inline code span of the rest."""
    found, rest = [], []
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (found if fenced else rest).append(line)
    prose = "\n".join(rest)
    found += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    return found


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_generated_tables_are_current(path):
    """A stale block: run `python docs/generate_tables.py` and commit what it writes."""
    text = _text(path)
    stale = GENERATOR.stale_blocks(path)
    assert not stale, f"{path.name}: generated tables out of date ({', '.join(stale)}): run python docs/generate_tables.py"
    starts, ends = text.count("<!-- generated:"), text.count("<!-- end generated -->")
    assert starts == ends == len(GENERATOR.BLOCK.findall(text)), f"{path.name}: unmatched generated-block markers"


def test_the_tables_that_must_not_drift_are_there():
    sources = {match.group("source") for path in DOCUMENTS for match in GENERATOR.BLOCK.finditer(_text(path))}
    assert {"wbc --help", "wbc train --help", "MLproject"} <= sources, sources


def test_generated_tables_follow_the_command_line():
    """The generator reads click's objects, not a copy: a default changed there changes the table."""
    train = {param.name: param for param in cli.commands["train"].params}
    table = GENERATOR.options_table("train")
    assert f"| `--epochs` | `{train['epochs'].default}` |" in table
    for name, entry in yaml.safe_load((REPO / "MLproject").read_text())["entry_points"].items():
        assert f"| `{name}` |" in GENERATOR.entry_points_table()


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_relative_links_exist(path):
    missing = []
    for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", _text(path)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        if not (path.parent / target.split("#")[0]).exists():
            missing.append(target)
    assert not missing, f"{path.name}: links to missing files: {missing}"


PROJECT_PATH = re.compile(r"(?<![\w./~-])((?:wbc|tests|docs|benchmarks|entrypoints|\.ci)/[\w./-]*[\w/])")


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_project_paths_exist(path):
    """Every `wbc/...`, `tests/...`, `docs/...`, `benchmarks/...`, `entrypoints/...` and `.ci/...` path named,
    from the project root."""
    missing = sorted({name for name in PROJECT_PATH.findall(_without_generated(_text(path))) if not (REPO / name).exists()})
    assert not missing, f"{path.name}: names paths that do not exist: {missing}"


def _options(command: click.Command) -> set[str]:
    return {name for param in command.params for name in [*param.opts, *getattr(param, "secondary_opts", [])]}


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_commands_and_options_exist(path):
    """`wbc COMMAND --option ...` in code: the command exists and takes the option."""
    wrong = []
    for code in _code(_without_generated(_text(path))):
        code = re.sub(r"(^|\s)#.*", "", code)  # a shell comment
        for match in re.finditer(r"(?:^|[\s/(])wbc ([a-z][a-z0-9_]*)\b([^#|;&`]*)", code):
            name, rest = match.groups()
            command = cli.commands.get(name)
            if command is None:
                wrong.append(f"wbc {name}")
                continue
            options = _options(command) | {"--help"}
            wrong += [f"wbc {name} {flag}" for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", rest) if flag not in options]
    assert not wrong, f"{path.name}: commands or options that do not exist: {wrong}"


@pytest.mark.parametrize("path", DOCUMENTS, ids=IDS)
def test_entry_points_exist(path):
    """`mlflow run . -e NAME` in code: MLproject has that entry point."""
    entry_points = set(yaml.safe_load((REPO / "MLproject").read_text())["entry_points"])
    named = {name for code in _code(_text(path)) for name in re.findall(r"mlflow run \S+ .*?-e (\w+)", code)}
    assert named <= entry_points, f"{path.name}: unknown entry points {sorted(named - entry_points)}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = _text(REPO / "README.md")
    pages = sorted(path.name for path in (REPO / "docs").glob("*.md"))
    unlinked = [name for name in pages if f"](docs/{name})" not in readme]
    assert not unlinked, f"README.md does not link {unlinked}"
