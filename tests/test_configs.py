"""Every YAML in configs/ loads with the schema it names (a header line ``# schema: module.Class``).

Files without a header are RunConfig files. Accelerate configs load with Accelerate's own parser.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from llmrec.config import RunConfig, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SCHEMA_LINE = re.compile(r"^#\s*schema:\s*([\w.]+)\s*$", re.MULTILINE)
ALL_YAML = sorted(p for p in CONFIGS.rglob("*.yaml") if p.parent.name != "accelerate")
ACCELERATE_YAML = sorted((CONFIGS / "accelerate").glob("*.yaml"))


def _schema_for(path: Path) -> type:
    match = SCHEMA_LINE.search(path.read_text(encoding="utf-8"))
    if not match:
        return RunConfig
    module, _, name = match.group(1).rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_there_are_configs() -> None:
    assert ALL_YAML, "configs/ holds no YAML"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_config_loads(path: Path) -> None:
    load_config([path], schema=_schema_for(path))


@pytest.mark.parametrize("path", ACCELERATE_YAML, ids=lambda p: p.name)
def test_accelerate_config_loads(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.compute_environment is not None
    assert "accelerate launch" in path.read_text(encoding="utf-8"), f"{path.name}: header must show its launch command"


@pytest.mark.parametrize(("base_name", "at_least"), [("benchmark-base.yaml", 10), ("benchmark-llm-baselines.yaml", 9)])
def test_benchmark_files_keep_the_split_evaluator_and_rows_they_include(base_name: str, at_least: int) -> None:
    """Their seeds merge with each other's baseline reports (llmrec merge-reports) only if the rows agree:
    a file that appends (`models+:`) starts with the included rows, and every includer keeps the split."""
    from llmrec.benchmark import BenchmarkConfig

    base = load_config([CONFIGS / "ml100k" / base_name], schema=BenchmarkConfig)
    including = [p for p in ALL_YAML if f"include: {base_name}" in p.read_text(encoding="utf-8")]
    assert len(including) >= at_least
    for path in including:
        config = load_config([path], schema=BenchmarkConfig)
        assert (config.data, config.eval, config.num_threads) == (base.data, base.eval, base.num_threads), path.name
        if "models+:" in path.read_text(encoding="utf-8"):
            assert config.models[: len(base.models)] == base.models, path.name
        if base_name == "benchmark-llm-baselines.yaml":  # the catalog-head files add LLM rows only
            assert all(model.name == "llm" for model in config.models[len(base.models):]), path.name
