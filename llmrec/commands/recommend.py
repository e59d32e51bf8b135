"""``llmrec recommend`` and ``llmrec explain``: query a trained run from the command line.

Examples::

    llmrec recommend --run runs/smollm2-lora --user 42 -k 10
    llmrec recommend --run runs/smollm2-lora --history "Toy Story (1995); Heat (1995)" --json
    llmrec explain --run runs/smollm2-lora --user 42 --item 50
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

HISTORY_SEPARATOR = ";"


def parse_history(text: str | None) -> list[str] | None:
    """``"Toy Story (1995); Heat (1995)"`` -> ``["Toy Story (1995)", "Heat (1995)"]`` (ids or titles)."""
    if text is None:
        return None
    entries = [part.strip() for part in text.split(HISTORY_SEPARATOR)]
    if not any(entries):
        raise typer.BadParameter("--history is empty; give item ids or titles separated by ';'")
    if not all(entries):
        raise typer.BadParameter("--history has an empty entry (two ';' in a row, or a trailing ';')")
    return entries


def _load(run: Path, device: str | None) -> Any:
    from llmrec.recommender import Recommender

    try:
        return Recommender.load(run, device=device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None


def _fail(err: Exception) -> typer.Exit:
    from llmrec.recommender import RecommendError

    message = err.message if isinstance(err, RecommendError) else str(err)
    typer.echo(f"error: {message}", err=True)
    for cand in getattr(err, "candidates", []):
        typer.echo(f"  closest: {cand['item_id']}  {cand['title']}", err=True)
    return typer.Exit(1)


def _query(user: str | None, history: str | None) -> list[str] | None:
    """The parsed ``--history`` entries; exactly one of ``--user`` / ``--history`` must be given."""
    entries = parse_history(history)
    if (user is None) == (entries is None):
        raise typer.BadParameter("give exactly one of --user or --history")
    return entries


def register(app: typer.Typer) -> None:
    """Add the ``recommend`` and ``explain`` commands to ``app``."""

    @app.command("recommend")
    def recommend_command(
        run: Path = typer.Option(..., "--run", help="run directory written by `llmrec train`"),
        user: str | None = typer.Option(None, "--user", help="a user id of the run's dataset"),
        history: str | None = typer.Option(None, "--history", help="item ids or titles separated by ';', oldest first"),
        k: int = typer.Option(10, "-k", "--k", min=1, help="number of items"),
        include_seen: bool = typer.Option(False, "--include-seen", help="allow items already in the history"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
        device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    ) -> None:
        """Recommend the top-k catalog items for a user or a history."""
        from llmrec.recommender import RecommendError

        entries = _query(user, history)
        recommender = _load(run, device)
        try:
            recs = recommender.recommend(user_id=user, history=entries, k=k, exclude_seen=not include_seen)
        except RecommendError as err:
            raise _fail(err) from None
        if as_json:
            typer.echo(json.dumps([r.to_dict() for r in recs], indent=2))
            return
        from rich.console import Console
        from rich.table import Table

        who = f"user {user}" if user is not None else f"a history of {len(entries or [])} items"
        table = Table(title=f"top {len(recs)} for {who} ({recommender.method})")
        for column, justify in (("#", "right"), ("item_id", "right"), ("title", "left"), ("score", "right")):
            table.add_column(column, justify=justify)  # type: ignore[arg-type]
        for rank, rec in enumerate(recs, 1):
            table.add_row(str(rank), rec.item_id, rec.title, f"{rec.score:.4f}")
        Console().print(table)
        if len(recs) < k:
            typer.echo(f"note: only {len(recs)} items could be recommended (k={k} clamped)", err=True)

    @app.command("explain")
    def explain_command(
        run: Path = typer.Option(..., "--run", help="run directory written by `llmrec train`"),
        item: str = typer.Option(..., "--item", help="catalog item id to explain"),
        user: str | None = typer.Option(None, "--user", help="a user id of the run's dataset"),
        history: str | None = typer.Option(None, "--history", help="item ids or titles separated by ';', oldest first"),
        as_json: bool = typer.Option(False, "--json", help="print JSON"),
        device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)"),
    ) -> None:
        """Explain why an item suits a user, citing only their history (checked, with a flagged fallback)."""
        from llmrec.recommender import RecommendError

        entries = _query(user, history)
        recommender = _load(run, device)
        try:
            explanation = recommender.explain(user_id=user, history=entries, item_id=item)
        except RecommendError as err:
            raise _fail(err) from None
        if as_json:
            typer.echo(json.dumps(explanation.to_dict(), indent=2))
            return
        typer.echo(explanation.text)
        typer.echo(f"\npath: {explanation.path}  tries: {explanation.tries}")
        if explanation.note:
            typer.echo(f"note: {explanation.note}")
        ev = explanation.evidence
        typer.echo(f"shared categories: {', '.join(ev.shared_categories) or '(none)'}")
        for sim in ev.similarities:
            typer.echo(f"similar: {sim['title']} ({sim['similarity']:.3f}, {ev.similarity_method})")
        for reason in explanation.rejected:
            typer.echo(f"rejected {reason}")
