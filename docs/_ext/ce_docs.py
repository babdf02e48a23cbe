"""Sphinx helpers for the ce_kernels reference.

``.. ce-cli-help::`` renders ``ce-kernels --help`` and the ``--help`` of
every subcommand, taken from ``ce_kernels.cli.build_parser()`` at build
time, so the page cannot drift from the program.

A consistency check warns (an error under ``-W``) when a name exported by
``ce_kernels.__all__`` or ``ce_kernels.torch.__all__`` has no entry in the
reference.
"""
from __future__ import annotations

import argparse
import importlib
import os
from typing import Iterator, List, Tuple

from docutils import nodes
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)

# argparse wraps help text to the terminal width; fix it for reproducible pages.
HELP_COLUMNS = "88"

# Modules whose __all__ must be documented, and the module path under which
# each name is documented.
DOCUMENTED_MODULES = ["ce_kernels", "ce_kernels.torch"]


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[Tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub


def _help_text(parser: argparse.ArgumentParser) -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        return parser.format_help().rstrip()
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


class CliHelp(SphinxDirective):
    """The ``--help`` output of the command and of each subcommand."""

    has_content = False

    def run(self) -> List[nodes.Node]:
        from ce_kernels.cli import build_parser

        parser = build_parser()
        result: List[nodes.Node] = []
        entries = [(parser.prog, parser)] + [
            (f"{parser.prog} {name}", sub) for name, sub in _subcommands(parser)]
        for title, sub in entries:
            ident = nodes.make_id(f"cli {title}")
            section = nodes.section(ids=[ident])
            section += nodes.title(text=f"{title} --help")
            text = _help_text(sub)
            block = nodes.literal_block(text, text, language="text")
            section += block
            result.append(section)
        return result


def check_public_names(app, env) -> None:
    """Warn about any public name that the reference does not document."""
    from sphinx.ext.autodoc.mock import mock

    documented = set(env.get_domain("py").objects)
    for modname in DOCUMENTED_MODULES:
        # torch may be replaced by a stand-in (autodoc_mock_imports in conf.py)
        with mock(app.config.autodoc_mock_imports):
            module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            if f"{modname}.{name}" not in documented:
                logger.warning("%s.%s is public (in __all__) but not in the API reference",
                               modname, name, type="ce_docs", subtype="undocumented")


def setup(app):
    app.add_directive("ce-cli-help", CliHelp)
    app.connect("env-check-consistency", check_public_names)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
