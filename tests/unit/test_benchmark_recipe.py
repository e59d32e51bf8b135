"""How benchmark entries load and (re)start their training runs: forced fields, resume rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmrec.config import RunConfig, dump_yaml, load_benchmark_recipe
from llmrec.training.checkpoint import CHECKPOINT_PREFIX, STATE_FILE
from llmrec.training.run_dir import INCOMPLETE_MARKER, resume_or_start

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "configs/ml100k/smollm2-lora.yaml"


def test_forced_fields_override_recipe_and_overrides() -> None:
    cfg = load_benchmark_recipe([RECIPE], ["train.seed=7", "train.learning_rate=1e-4"], "/data/x", 3)
    assert cfg.train.seed == 3 and cfg.data.prepared_dir == "/data/x"  # the benchmark's, not the override's
    assert cfg.train.learning_rate == 1e-4  # other overrides still apply
    plain: RunConfig = load_benchmark_recipe([RECIPE], [], "/data/x", 3)
    assert plain.train.output_dir.endswith("-seed3")
    assert load_benchmark_recipe([RECIPE], [], "/data/x", 3, "runs/mine").train.output_dir == "runs/mine"
    odd = load_benchmark_recipe([RECIPE], [], "/data/a: b, [c]", 3, "runs/x: {y}")  # YAML-significant paths stay paths
    assert (odd.data.prepared_dir, odd.train.output_dir) == ("/data/a: b, [c]", "runs/x: {y}")


def _interrupted(run_dir: Path, cfg: RunConfig, checkpoint: bool = True) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / INCOMPLETE_MARKER).write_text("started\n")
    (run_dir / "config.yaml").write_text(dump_yaml(cfg))
    if checkpoint:
        step = run_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}10"
        step.mkdir(parents=True)
        (step / STATE_FILE).write_text("{}")


def test_resume_or_start(tmp_path: Path) -> None:
    cfg = load_benchmark_recipe([RECIPE], [], tmp_path / "data", 0, str(tmp_path / "run"))
    run = tmp_path / "run"
    assert resume_or_start(run, cfg) is False  # nothing there
    run.mkdir()
    assert resume_or_start(run, cfg) is False  # empty
    run.rmdir()
    _interrupted(run, cfg)
    assert resume_or_start(run, cfg) is True  # killed mid-training: continue
    other = load_benchmark_recipe([RECIPE], [], tmp_path / "data", 1, str(run))
    with pytest.raises(FileExistsError, match="different config"):
        resume_or_start(run, other)
    (run / INCOMPLETE_MARKER).unlink()
    with pytest.raises(FileExistsError, match="finished run"):
        resume_or_start(run, cfg)
    bare = tmp_path / "bare"
    _interrupted(bare, cfg, checkpoint=False)
    with pytest.raises(FileExistsError, match="without a checkpoint"):
        resume_or_start(bare, cfg)
