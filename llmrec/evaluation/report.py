"""Human-readable forms of a benchmark report: markdown tables (ranking, interest tags) and a bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

TABLE_METRICS = ("hr@5", "ndcg@5", "mrr@5", "hr@10", "ndcg@10", "mrr@10", "hr@20", "ndcg@20", "mrr@20", "coverage@10", "valid_item_rate")
CHART_METRICS = ("hr@10", "ndcg@10")
# Interest-tag table: metric key of llmrec.tags.baselines.evaluate_tags -> column name.
TAG_COLUMNS = {"f1@3": "F1@3", "precision@3": "P@3", "recall@3": "R@3", "auc_micro": "AUC micro", "auc_macro": "AUC macro"}


def results_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: one row per run, plus mean ± std rows for models with several seeds.

    A report with interest-tag rows (``report["tags"]``) gets a second table after the ranking one.
    """
    metrics = [m for m in TABLE_METRICS if any(m in run["metrics"] for run in report["runs"])]
    header = ["model", *metrics, "train s", "infer s", "seed"]
    lines = [
        f"# Benchmark: {report['dataset']['dir']} ({report['eval']['split']} split, full ranking)",
        "",
        _hardware_line(report["hardware"]),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for run in report["runs"]:
        cells = [f"{run['metrics'][m]:.4f}" if m in run["metrics"] else "" for m in metrics]
        lines.append(
            f"| {run['label']} | " + " | ".join(cells)
            + f" | {run['train_time_s']:.1f} | {run['inference_time_s']:.1f} | {run['seed']} |"
        )
    lines += _summary_rows(report["summary"], metrics)
    if report.get("tags"):
        lines += ["", *tags_markdown(report)]
    lines += ["", f"Total time: {report['total_time_s']:.0f} s. Command: `{report.get('command', '')}`", ""]
    if report.get("sources"):  # a merged report (llmrec.benchmark.merge_reports): the commands that made its rows
        lines += ["Merged from:", ""]
        lines += [f"- `{src['dir']}` ({src['total_time_s']:.0f} s): `{src['command']}`" for src in report["sources"]]
        lines.append("")
    return "\n".join(lines)


def tags_markdown(report: dict[str, Any]) -> list[str]:
    """The interest-tag table: one row per tag run (and mean ± std rows), as markdown lines."""
    header = ["model", *TAG_COLUMNS.values(), "users", "train s", "infer s", "seed"]
    lines = [
        "## Interest-tag prediction",
        "",
        f"Categories of each user's held-out next item ({report['eval']['split']} split), multi-label, "
        "ranked over the tag vocabulary; users = users scored (targets without categories skipped).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for run in report["tags"]:
        cells = [f"{run['metrics'][m]:.4f}" if m in run["metrics"] else "" for m in TAG_COLUMNS]
        users = int(run["metrics"].get("queries", run["users"]))
        lines.append(
            f"| {run['label']} | " + " | ".join(cells)
            + f" | {users} | {run['train_time_s']:.1f} | {run['inference_time_s']:.1f} | {run['seed']} |"
        )
    return lines + _summary_rows(report.get("tags_summary", []), list(TAG_COLUMNS), blank=1)


def _summary_rows(summary: list[dict[str, Any]], metrics: list[str], blank: int = 0) -> list[str]:
    """Mean ± std rows of the labels run with several seeds (``blank`` empty cells after the metrics)."""
    lines = []
    for entry in summary:
        if len(entry["seeds"]) < 2:
            continue
        stats = entry["stats"]
        cells = [f"{stats[m]['mean']:.4f} ± {stats[m]['std']:.4f}" if m in stats else "" for m in metrics] + [""] * blank
        lines.append(
            f"| **{entry['label']} (mean ± std)** | " + " | ".join(cells)
            + f" | {stats['train_time_s']['mean']:.1f} | {stats['inference_time_s']['mean']:.1f}"
            + f" | {','.join(map(str, entry['seeds']))} |"
        )
    return lines


def _hardware_line(hardware: dict[str, Any]) -> str:
    return (
        f"Hardware: {hardware['cpu']} ({hardware['cpu_count']} CPUs visible, {hardware['torch_threads']} torch threads), "
        f"torch {hardware['torch']}, Python {hardware['python']}"
        + (f", GPU {hardware['cuda']}" if hardware.get("cuda") else "")
    )


def plot_results(report: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of HR@10 and NDCG@10 per model (mean, with std error bars over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [entry["label"] for entry in report["summary"]]
    figure, axis = plt.subplots(figsize=(max(4.0, 1.4 * len(labels) + 2), 3.5))
    width = 0.8 / len(CHART_METRICS)
    for i, metric in enumerate(CHART_METRICS):
        means = [entry["stats"].get(metric, {"mean": 0.0})["mean"] for entry in report["summary"]]
        stds = [entry["stats"].get(metric, {"std": 0.0})["std"] for entry in report["summary"]]
        positions = [x + (i - (len(CHART_METRICS) - 1) / 2) * width for x in range(len(labels))]
        axis.bar(positions, means, width, yerr=stds, capsize=3, label=metric)
    axis.set_xticks(range(len(labels)), labels)
    axis.set_ylabel("score")
    axis.set_title(f"{Path(report['dataset']['dir']).name}: {report['eval']['split']} split, full ranking")
    axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
