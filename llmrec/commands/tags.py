"""``llmrec tags``: a user's predicted interest tags (genres) from a trained run.

Examples::

    llmrec tags --run runs/minilm-tags --user 42            # encoder + multi-label head run
    llmrec tags --run runs/smollm2-lora --user 42 -k 5      # decoder run: constrained tag likelihoods
    llmrec tags --run runs/minilm-tags --user 42 --json

The user's whole known history (train, valid and test events) is the input: the tags describe
what the user is likely to watch next.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer


def load_tag_scorer(run: Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(scorer, dataset)`` for a tag-classifier run or a decoder run.

    Raises:
        FileNotFoundError / ValueError: not a run directory, or a run of another task.
    """
    from llmrec.run_loading import open_dataset, read_run_info

    info = read_run_info(run)
    if info.kind == "encoder":
        from llmrec.tags.classifier import TagClassifier

        dataset = open_dataset(info)
        if info.raw.get("task") != "tags":
            raise ValueError(f"{run / 'run.json'}: an encoder run of task {info.raw.get('task')!r} has no tag head; "
                             "train one with scripts/train_tags.py")
        return TagClassifier.load(run, catalog=dataset.catalog, device=device), dataset
    from llmrec.tags.generate import load_run_tag_scorer

    return load_run_tag_scorer(run, device)


def register(app: typer.Typer) -> None:
    """Add the ``tags`` command to ``app``."""

    @app.command("tags")
    def tags_command(
        run: Path = typer.Option(..., "--run", help="run directory (tag-classifier or decoder run)"),
        user: str = typer.Option(..., "--user", help="a user id of the run's dataset"),
        k: int = typer.Option(5, "-k", "--k", min=1, help="number of tags to print"),
        as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
        device: str = typer.Option("cpu", "--device", help="torch device"),
    ) -> None:
        """Print the user's most likely interest tags with their scores."""
        try:
            scorer, dataset = load_tag_scorer(run, device)
            history = dataset.user_sequence(user)
        except (FileNotFoundError, ValueError, KeyError) as err:
            typer.echo(f"error: {err.args[0] if isinstance(err, KeyError) else err}", err=True)
            raise typer.Exit(2) from None
        scores = scorer.score_tags([history])[0]
        order = sorted(range(len(scorer.tags)), key=lambda j: (-scores[j], j))[:k]
        ranked = [{"tag": scorer.tags[j], "score": float(scores[j])} for j in order]
        if as_json:
            typer.echo(json.dumps({"user": user, "tags": ranked}, indent=2))
            return
        typer.echo(f"user {user} ({len(history)} events): top {len(ranked)} tags")
        for rank, row in enumerate(ranked, 1):
            typer.echo(f"{rank:>3}. {row['tag']:<14} {row['score']:.4f}")
