"""``llmrec quickstart``: the main job in one command (fetch, prepare, train, evaluate vs Pop, show a user).

Examples::

    llmrec quickstart
    llmrec quickstart --out reports/quickstart --user 42
    llmrec quickstart --fast                      # tiny CI-sized run (or LLMREC_QUICKSTART_FAST=1)
    llmrec quickstart --config configs/quickstart.yaml max_steps=100 train_seconds=300
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``quickstart`` command to ``app``."""

    @app.command("quickstart")
    def quickstart_command(
        out: Path = typer.Option(None, "--out", help="report directory (default reports/quickstart; replaced atomically)"),
        cache_dir: Path = typer.Option(None, "--cache-dir", help="asset cache (default $LLMREC_CACHE or ~/.cache/llmrec)"),
        user: str = typer.Option(None, "--user", help="user id of the example (default: the first test user)"),
        fast: bool = typer.Option(False, "--fast", help="tiny CI-sized run: a few steps, 200 test users (also LLMREC_QUICKSTART_FAST=1)"),
        data_dir: Path = typer.Option(None, "--data-dir", help="prepared dataset dir (default data/ml-100k; prepared when missing)"),
        config: list[Path] = typer.Option(None, "--config", "-c", help="YAML file(s) of QuickstartConfig fields"),
        overrides: list[str] = typer.Argument(None, help="field=value overrides (e.g. max_steps=100 train_seconds=300)"),
    ) -> None:
        """Fetch the assets, prepare ML-100K, train the MiniLM two-tower recommender, compare it with Pop, show one user."""
        from rich.console import Console
        from rich.markup import escape

        from llmrec.assets import AssetError
        from llmrec.config import ConfigError, load_config
        from llmrec.quickstart import FAST_ENV, QuickstartConfig, fast_config, run_quickstart

        try:
            cfg: QuickstartConfig = load_config(config or [], overrides or [], schema=QuickstartConfig)
        except (ConfigError, ValueError) as err:
            raise typer.BadParameter(str(err)) from None
        if fast or os.environ.get(FAST_ENV, "").strip().lower() in ("1", "true", "yes", "on"):
            cfg = fast_config(cfg)
        if out is not None:
            cfg.out_dir = str(out)
        if data_dir is not None:
            cfg.data_dir = str(data_dir)
        if user is not None:
            cfg.user = user
        console = Console(file=sys.stdout, record=True)
        if not console.is_terminal:
            console.width = max(console.width, 120)  # log files: keep the metrics table on one line per model
        command = shlex.join(["llmrec", *sys.argv[1:]])
        try:
            run_quickstart(cfg, console=console, cache_dir=cache_dir, command=command)
        except AssetError as err:
            console.print(f"[red]could not fetch an asset:[/red]\n{escape(str(err))}", highlight=False)
            raise typer.Exit(1) from None
        except ValueError as err:  # e.g. --user that is not in the dataset
            console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False)
            raise typer.Exit(2) from None
