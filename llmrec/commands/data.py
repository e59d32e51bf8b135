"""``llmrec data``: prepare raw logs into a dataset directory, and describe one.

Examples::

    llmrec data prepare --dataset ml-100k --out data/ml-100k
    llmrec data prepare --dataset ml-1m --path ~/raw/ml-1m --out data/ml-1m --k-core 5
    llmrec data prepare --config configs/ml100k/data.yaml data.min_rating=4 --overwrite
    llmrec data prepare --dataset tabular --path log.csv --catalog items.csv data.columns.user_id=uid --out data/shop
    llmrec data stats data/ml-100k
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

data_app = typer.Typer(help="Prepare raw interaction logs into a dataset directory, and inspect one.", no_args_is_help=True)


def _data_config(config: list[Path] | None, overrides: list[str], flags: dict[str, Any]) -> Any:
    """DataConfig from YAML file(s), then ``key=value`` overrides, then the explicit flags."""
    from llmrec.config import ConfigError, load_config

    flag_overrides = [f"data.{key}={_yaml_value(value)}" for key, value in flags.items() if value is not None]
    try:
        return load_config(config or [], [*overrides, *flag_overrides]).data
    except ConfigError as err:
        raise typer.BadParameter(str(err)) from None


def _yaml_value(value: Any) -> str:
    import json

    return json.dumps(value) if isinstance(value, str) else str(value)


def _counts_table(title: str, rows: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        shown = f"{value:,}" if isinstance(value, int) else (f"{value:.6g}" if isinstance(value, float) else str(value))
        table.add_row(key.replace("_", " "), shown)
    return table


@data_app.command("prepare")
def prepare_command(
    overrides: list[str] | None = typer.Argument(None, help="data.key=value overrides (after --config, before flags)"),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="ml-100k | ml-1m | recbole | amazon2018 | amazon2023 | tabular"),
    path: str | None = typer.Option(None, "--path", help="raw files (dir or file); default: fetch the named asset"),
    out: Path | None = typer.Option(None, "--out", "-o", help="output directory (default: data.prepared_dir)"),
    config: list[Path] | None = typer.Option(None, "--config", "-c", help="YAML config file(s) with a data: group"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an existing output directory"),
    on_bad_row: str | None = typer.Option(None, "--on-bad-row", help="error (default) | skip (counted in the manifest)"),
    k_core: int | None = typer.Option(None, "--k-core", help="keep users and items with at least N interactions"),
    min_rating: float | None = typer.Option(None, "--min-rating", help="keep interactions rated at least R"),
    split: str | None = typer.Option(None, "--split", help="leave_one_out (default) | temporal"),
    catalog: str | None = typer.Option(None, "--catalog", help="catalog / meta file (tabular, Amazon)"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="asset cache (default $LLMREC_CACHE or ~/.cache/llmrec)"),
) -> None:
    """Load, validate, dedupe, filter and split a dataset; write it atomically with a manifest."""
    from rich.console import Console
    from rich.markup import escape

    from llmrec.data.prepare import prepare_dataset
    from llmrec.data.splits import LeakageError
    from llmrec.data.validate import DataError

    flags = {
        "dataset": dataset, "path": path, "on_bad_row": on_bad_row, "k_core": k_core,
        "min_rating": min_rating, "split": split, "catalog_path": catalog,
    }  # fmt: skip
    cfg = _data_config(config, overrides or [], flags)
    console = Console()
    try:
        prepared = prepare_dataset(cfg, out_dir=out, overwrite=overwrite, cache_dir=cache_dir)
    except (DataError, LeakageError, FileExistsError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    manifest = prepared.manifest
    console.print(_counts_table(f"{cfg.dataset} -> {prepared.root}", manifest["counts"]))
    skipped = manifest["skipped_rows"]
    removed = {k: v for k, v in manifest["removed"].items() if v}
    if skipped["total"]:
        console.print(f"skipped bad rows: {skipped['total']:,} {skipped['by_reason']}", highlight=False, soft_wrap=True)
    if removed:
        console.print(f"removed: {removed}", highlight=False, soft_wrap=True)
    if manifest["split"].get("short_users"):
        policy = manifest["split"]["short_user_policy"]
        console.print(f"users with < 3 events ({policy}): {manifest['split']['short_users']:,}", highlight=False, soft_wrap=True)


@data_app.command("stats")
def stats_command(directory: Path = typer.Argument(..., help="a prepared dataset directory")) -> None:
    """Counts, sequence lengths and provenance of a prepared dataset."""
    from rich.console import Console
    from rich.markup import escape

    from llmrec.data.dataset import PreparedDataset
    from llmrec.data.prepare import dataset_stats

    console = Console()
    try:
        dataset = PreparedDataset.load(directory, verify=True)
    except (FileNotFoundError, ValueError) as err:
        console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1) from None
    stats = dataset_stats(dataset)
    actions = stats.pop("actions")
    console.print(_counts_table(f"{dataset.manifest.get('dataset', '?')} at {directory}", stats))
    console.print(f"actions: {actions}", highlight=False, soft_wrap=True)
    manifest = dataset.manifest
    source = manifest.get("source", {})
    console.print(
        f"source: {source.get('kind')} {source.get('asset') or source.get('path')} ({source.get('format')}); "
        f"split: {manifest.get('split', {}).get('kind')}; config hash {manifest.get('config_hash')}; "
        f"created {manifest.get('created')} by llmrec {manifest.get('llmrec_version')}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to ``app``."""
    app.add_typer(data_app, name="data")
