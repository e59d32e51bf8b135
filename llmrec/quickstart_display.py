"""What ``llmrec quickstart`` shows on the console: stage headers, progress bars, the tables.

:mod:`llmrec.quickstart` runs the pipeline; this module only displays it (rich progress bars on
a terminal, one line every few steps in a log file) and prints its results.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from llmrec.data.schema import UserSequence

TABLE_METRICS = ("hr@10", "ndcg@10", "mrr@10", "coverage@10")
PLAIN_LOG_EVERY = 10  # without a terminal (CI logs), print every N-th training step as a line


def make_progress(console: Console) -> Progress:
    """A progress display (spinner, bar, counts, elapsed time); stdout is left alone (see :class:`TrainLogStream`)."""
    return Progress(
        SpinnerColumn(), TextColumn("[progress.description]{task.description}"), BarColumn(),
        MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, redirect_stdout=False, transient=False,
    )


@contextlib.contextmanager
def stage(
    console: Console, timings: dict[str, float], cpu: dict[str, float], name: str, description: str
) -> Iterator[Progress]:
    """Print the stage header, show a progress display while it runs, record its wall and CPU time.

    CPU time (all threads of this process) is what lets a run on a shared, loaded machine be
    scaled to a quiet one: wall time there is about CPU time / number of cores.
    """
    console.rule(f"[bold]{description}")
    start, start_cpu = time.perf_counter(), time.process_time()
    with make_progress(console) as progress:
        yield progress
    timings[name] = round(time.perf_counter() - start, 2)
    cpu[name] = round(time.process_time() - start_cpu, 2)
    console.print(f"[dim]{description}: {timings[name]:.1f} s wall, {cpu[name]:.1f} s CPU[/dim]")


class TrainLogStream(io.TextIOBase):
    """Stands in for stdout during training: turns its JSON log lines into progress-bar updates.

    ``train_two_tower`` prints one JSON record per logged step (``{"step", "loss", ...}``) and one
    with the validation metrics; other lines are passed to the console unchanged.
    """

    def __init__(self, progress: Progress, task: Any, console: Console):
        self.progress, self.task, self.console = progress, task, console
        self.buffer = ""
        self.records: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.buffer += text
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if line.strip():
                self.console.print(line, markup=False, highlight=False)
            return
        self.records.append(record)
        if "loss" in record:
            self.progress.update(self.task, completed=record["step"],
                                 description=f"training (loss {record['loss']:.3f})")
            if not self.console.is_terminal and record["step"] % PLAIN_LOG_EVERY == 0:  # a log file gets no live bar
                self.console.print(f"  step {record['step']}: loss {record['loss']:.4f}, {record['seconds']:.0f} s")
        elif "valid_ndcg@10" in record:
            self.progress.update(self.task, description=f"trained; valid NDCG@10 {record['valid_ndcg@10']:.4f}")


class ProgressScorer:
    """A ``CatalogScorer`` that advances a progress bar by the number of users it scores."""

    def __init__(self, scorer: Any, progress: Progress, task: Any):
        self.scorer, self.progress, self.task = scorer, progress, task

    def score(self, histories: Sequence[UserSequence]) -> Any:
        scores = self.scorer.score(histories)
        self.progress.advance(self.task, len(histories))
        return scores


def metrics_table(rows: Sequence[dict[str, Any]], split: str) -> Table:
    """The printed comparison: HR/NDCG/MRR@10, coverage@10, train and scoring time per model."""
    n = int(rows[0]["metrics"]["num_queries"]) if rows else 0
    table = Table(title=f"{split} split, full-catalog ranking, {n} users")
    table.add_column("model")
    for metric in TABLE_METRICS:
        table.add_column(metric.upper().replace("COVERAGE", "Coverage"), justify="right")
    table.add_column("train s", justify="right")
    table.add_column("eval s", justify="right")
    for row in rows:
        cells = [f"{row['metrics'][m]:.4f}" for m in TABLE_METRICS]
        table.add_row(escape(row["label"]), *cells, f"{row['train_time_s']:.1f}", f"{row['inference_time_s']:.1f}")
    return table


def print_user_example(console: Console, example: dict[str, Any]) -> None:
    """History, recommendations and the explanation with its path and evidence."""
    history = Table(title=f"user {example['user_id']}: last {len(example['recent_history'])} of {example['history_length']} rated items")
    for column in ("#", "title", "categories", "rating"):
        history.add_column(column)
    start = example["history_length"] - len(example["recent_history"])
    for pos, item in enumerate(example["recent_history"], start=start + 1):
        rating = "" if item["rating"] is None else f"{item['rating']:g}"
        history.add_row(str(pos), escape(item["title"]), escape(", ".join(item["categories"])), rating)
    console.print(history)
    recs = Table(title=f"top-{len(example['recommendations'])} recommendations (seen items excluded)")
    for column in ("rank", "item id", "title", "score"):
        recs.add_column(column)
    for rank, rec in enumerate(example["recommendations"], start=1):
        recs.add_row(str(rank), escape(rec["item_id"]), escape(rec["title"]), f"{rec['score']:.4f}")
    console.print(recs)
    explanation = example["explanation"]
    if explanation is None:
        return
    console.print(f"[bold]Why {escape(example['recommendations'][0]['title'])}?[/bold] {escape(explanation['text'])}")
    evidence = explanation["evidence"]
    note = f"; note: {explanation['note']}" if explanation.get("note") else ""
    console.print(escape(f"  path: {explanation['path']} (tries: {explanation['tries']}){note}"))
    console.print(escape(f"  shared categories: {', '.join(evidence['shared_categories']) or 'none'}"))
    for sim in evidence["similarities"]:
        console.print(escape(f"  similar history item: {sim['title']} ({evidence['similarity_method']} {sim['similarity']:.3f})"))
