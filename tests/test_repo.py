"""Repository-level promises: the CLI lists every job, and CI runs exactly the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]


def test_cli_lists_every_job() -> None:
    from llmrec import cli

    cli._register_all()
    result = CliRunner().invoke(cli.app, ["--help"])
    assert result.exit_code == 0, result.output
    for command in ("quickstart", "assets", "data", "train", "benchmark", "evaluate", "recommend", "explain",
                    "tags", "serve"):
        assert re.search(rf"\b{command}\b", result.output), f"`llmrec {command}` missing from --help"


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.DOTALL)
    test_block = next(b for b in blocks if "pytest" in b)
    # The README's line: install && test command; CI runs both halves in its fresh venv.
    install, _, test_command = test_block.rpartition(" && HF_HUB_OFFLINE=1 ")
    assert "pip install torch==2.13.0 && pip install -e \".[dev]\"" in install
    assert "pip install torch==2.13.0 && pip install -e \".[dev]\"" in ci
    assert test_command in ci, f"CI must run the README's test command: {test_command!r}"
    assert "HF_HUB_OFFLINE=1" in ci
