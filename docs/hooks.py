"""MkDocs hooks (mkdocs.yml ``hooks:``): pages generated from the code when the site is built.

``docs/cli.md`` gets the help of every ``capsnet`` command and subcommand from the real
parser (:func:`capsnet.cli.options.build_parser`), ``docs/api.md`` an entry for every
public name that ``capsnet/__init__.py`` exports, so neither can drift from the code.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
CLI_MARKER = "<!-- generated: cli reference -->"
API_MARKER = "<!-- generated: api reference -->"
# A link from a page to a file of the repository outside docs/, e.g. [log](../benchmarks/x.log):
# it works where the Markdown is read in the repository; the site has no such file.
OUTSIDE = re.compile(r"\[([^\]]+)\]\(\.\./([^)#\s]+)(#[^)\s]*)?\)")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [(name, sub) for a in actions for name, sub in a.choices.items()]


def walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, str]]:
    """(command path, help text) of ``parser`` and every subcommand below it, depth first."""
    yield path, parser.format_help()
    for name, sub in _subcommands(parser):
        yield from walk(sub, f"{path} {name}")


def cli_reference() -> str:
    """Markdown: one section per command, its ``--help`` at a width of 100 columns."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from capsnet.cli.options import build_parser

    columns = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps help to the terminal's width
    try:
        helps = list(walk(build_parser(), "capsnet"))
    finally:
        if columns is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = columns
    sections = []
    for path, text in helps:
        level = "#" * min(path.count(" ") + 2, 4)
        sections.append(f"{level} `{path}`\n\n```text\n{text.rstrip()}\n```\n")
    return "\n".join(sections)


def api_reference() -> str:
    """Markdown: a mkdocstrings entry for each name ``capsnet`` exports, by defining module."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    from capsnet import _LAZY

    return "\n".join(f"::: {module}.{name}\n" for name, module in sorted(_LAZY.items()))


def repository_links(markdown: str, repo_url: str | None) -> str:
    """Links to repository files outside docs/: to ``repo_url`` if set, else their paths."""

    def replace(match: re.Match) -> str:
        text, path, anchor = match[1], match[2], match[3] or ""
        if repo_url:
            return f"[{text}]({repo_url.rstrip('/')}/blob/HEAD/{path}{anchor})"
        return text if text.strip("`") == path else f"{text} (`{path}`)"

    return OUTSIDE.sub(replace, markdown)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs' API)
    markdown = repository_links(markdown, config.get("repo_url"))
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    if API_MARKER in markdown:
        markdown = markdown.replace(API_MARKER, api_reference())
    return markdown
