"""The ``llmrec`` command: subcommands grouped by job.

Each job lives in ``llmrec/commands/<job>.py`` and exposes ``register(app)``. Heavy libraries
(torch, transformers) are imported inside the commands, so ``llmrec --help`` stays instant.
"""

from __future__ import annotations

import importlib
import os

import typer

# Order is the order shown by ``llmrec --help``.
COMMAND_MODULES = [
    "llmrec.commands.quickstart",
    "llmrec.commands.assets",
    "llmrec.commands.data",
    "llmrec.commands.train",
    "llmrec.commands.evaluate",
    "llmrec.commands.recommend",
    "llmrec.commands.tags",
    "llmrec.commands.serve",
]

app = typer.Typer(
    help="llmrec: serialize behavior sequences, fine-tune language models to recommend, measure it honestly.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def main() -> None:
    """Entry point of the ``llmrec`` console script."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _register_all()
    app()


if __name__ == "__main__":
    main()
