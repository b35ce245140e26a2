"""Regenerate the tables in README.md and docs/*.md that come from the command line and from MLproject.

Each generated table sits between two marker comments:

    <!-- generated: wbc train --help -->
    ...
    <!-- end generated -->

The text after ``generated:`` names the source: ``wbc --help`` (the commands), ``wbc COMMAND --help`` (that
command's arguments and options, read from click's command objects), ``wbc main --help vs wbc train --help``
(what ``wbc main`` adds or sets differently) or ``MLproject`` (the entry points). Usage, from the project root:

    python docs/generate_tables.py            # rewrite the blocks in place
    python docs/generate_tables.py --check    # exit 1 and name the stale blocks, change nothing

tests/test_docs.py fails when a block differs from what this script would write now.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import click
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(<!-- generated: (?P<source>.+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)


def _cli() -> click.Group:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from wbc.cli import cli

    return cli


def _cell(text: object) -> str:
    """Text for one Markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _prose(text: object) -> str:
    """A table cell of prose: ``<`` escaped, so ``<class>`` is not read as an HTML tag."""
    return _cell(text).replace("<", "&lt;")


def _code(text: str) -> str:
    return f"`{text}`" if text else ""


def _flags(param: click.Parameter) -> str:
    """The option's spellings, without the underscore aliases that exist for ``mlflow run -P``."""
    if isinstance(param, click.Argument):
        return _code(param.human_readable_name) + " (argument)"
    names = [name for name in param.opts if "_" not in name.lstrip("-")]
    if getattr(param, "secondary_opts", None):
        names = [f"{names[0]} / {param.secondary_opts[0]}"]
    return ", ".join(_code(name) for name in names)


def _unset(value: object) -> bool:
    """No default: None, empty, or click's own marker for "not given" (click 8.3's ``UNSET``)."""
    return value is None or value == () or value == "" or "UNSET" in repr(value)


def _default(param: click.Parameter, reference: click.Parameter | None = None) -> str:
    """The default as ``--help`` shows it; the value itself where it differs from ``reference``'s."""
    value = None if _unset(param.default) else param.default
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str) and (reference is None or value == reference.default):
        return f"({shown})"
    if isinstance(param, click.Option) and param.is_flag:
        if param.secondary_opts:
            return _code(param.opts[0] if value else param.secondary_opts[0])
        return "on" if value else "off"
    if value is None:
        return "required" if param.required else "–"
    return _code(str(value))


def _values(param: click.Parameter) -> str:
    kind = param.type
    if isinstance(kind, click.Choice):
        return " | ".join(str(choice) for choice in kind.choices)
    if isinstance(kind, (click.IntRange, click.FloatRange)):
        low, high = kind.min, kind.max
        name = "integer" if isinstance(kind, click.IntRange) else "number"
        if low is None and high is None:
            return name
        if high is None:
            return f"{name} {'>' if kind.min_open else '≥'} {low}"
        if low is None:
            return f"{name} {'<' if kind.max_open else '≤'} {high}"
        left = "(" if kind.min_open else "["
        right = ")" if kind.max_open else "]"
        return f"{name} in {left}{low}, {high}{right}"
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if getattr(param, "multiple", False) or getattr(param, "nargs", 1) == -1:
        return f"{param.metavar or kind.name}, repeatable"
    return param.metavar or kind.name


def _params(command: click.Command) -> list[click.Parameter]:
    return [param for param in command.params if param.name != "help"]


def commands_table() -> str:
    """``wbc --help``: each command, its arguments and its help."""
    cli = _cli()
    rows = ["| command | arguments | what it does |", "|---|---|---|"]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        arguments = " ".join(
            (param.human_readable_name + ("..." if param.nargs == -1 else "")) if param.required
            else f"[{param.human_readable_name}]"
            for param in command.params if isinstance(param, click.Argument)
        )
        rows.append(f"| `wbc {name}` | {_cell(_code(arguments))} | {_prose(command.help)} |")
    return "\n".join(rows) + "\n"


def options_table(name: str) -> str:
    """``wbc NAME --help``: every argument and option with its default, accepted values and help."""
    command = _cli().commands[name]
    params = _params(command)
    if not params:
        return "No options.\n"
    rows = ["| option | default | values | meaning |", "|---|---|---|---|"]
    for param in params:
        help_text = "" if isinstance(param, click.Argument) else (param.help or "")
        rows.append(f"| {_flags(param)} | {_cell(_default(param))} | {_cell(_values(param))} | {_prose(help_text)} |")
    return "\n".join(rows) + "\n"


def main_differences_table() -> str:
    """``wbc main``'s options that ``wbc train`` lacks or defaults differently."""
    cli = _cli()
    train = {param.name: param for param in _params(cli.commands["train"])}
    rows = ["| option | `wbc main` | `wbc train` | meaning |", "|---|---|---|---|"]
    for param in _params(cli.commands["main"]):
        reference = train.get(param.name)
        if reference is not None and reference.default == param.default:
            continue
        train_default = _default(reference) if reference is not None else "(no such option)"
        rows.append(f"| {_flags(param)} | {_cell(_default(param, reference))} | {_cell(train_default)} | {_prose(param.help)} |")
    return "\n".join(rows) + "\n"


def _entry_command(command: str) -> str:
    """An MLproject command with ``python entrypoints/X.py`` written as the ``wbc`` command that script runs."""

    def replace(match: re.Match) -> str:
        script = (ROOT / match.group(1)).read_text()
        found = re.search(r"main\(\[\"(\w+)\"", script)
        return f"wbc {found.group(1)}" if found else match.group(0)

    return re.sub(r"python (entrypoints/\w+\.py)", replace, " ".join(command.split()))


def entry_points_table() -> str:
    """MLproject: each entry point, the command it runs and the parameters it declares."""
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    rows = ["| entry point | runs (through `entrypoints/`) | declared parameters (default) |", "|---|---|---|"]
    for name, entry in project["entry_points"].items():
        declared = []
        for parameter, spec in (entry.get("parameters") or {}).items():
            spec = spec if isinstance(spec, dict) else {"default": spec}
            default = spec.get("default")
            declared.append(f"`{parameter}` ({'required' if default is None else default})")
        rows.append(f"| `{name}` | {_cell(_code(_entry_command(entry['command'])))} | {_cell(', '.join(declared) or '–')} |")
    return "\n".join(rows) + "\n"


def generate(source: str) -> str:
    """The Markdown for one marker's ``source``."""
    if source == "wbc --help":
        return commands_table()
    if source == "wbc main --help vs wbc train --help":
        return main_differences_table()
    if source == "MLproject":
        return entry_points_table()
    match = re.fullmatch(r"wbc (\w+) --help", source)
    if match and match.group(1) in _cli().commands:
        return options_table(match.group(1))
    raise ValueError(f"unknown generated block source {source!r}")


def regenerate(text: str) -> str:
    """``text`` with every generated block rewritten."""
    return BLOCK.sub(lambda match: match.group(1) + generate(match.group("source")) + match.group(4), text)


def stale_blocks(path: Path) -> list[str]:
    """The sources of the blocks in ``path`` that differ from what :func:`generate` writes now."""
    return [match.group("source") for match in BLOCK.finditer(path.read_text())
            if match.group("body") != generate(match.group("source"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report stale blocks, change nothing")
    arguments = parser.parse_args(argv)
    stale = 0
    for path in DOCUMENTS:
        text = path.read_text()
        new = regenerate(text)
        if new == text:
            continue
        stale += 1
        if arguments.check:
            print(f"{path.relative_to(ROOT)}: stale: {', '.join(stale_blocks(path))}")
        else:
            path.write_text(new)
            print(f"rewrote {path.relative_to(ROOT)}")
    if arguments.check and stale:
        print("run: python docs/generate_tables.py")
    return 1 if arguments.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
