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
