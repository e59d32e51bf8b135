"""``llmrec serve``: the HTTP service over one run (see :mod:`llmrec.serve`).

Example::

    llmrec serve --run runs/smollm2-lora --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""

    @app.command("serve")
    def serve_command(
        run: Path = typer.Option(..., "--run", help="run directory written by `llmrec train` (fixed for the server's life)"),
        host: str = typer.Option("127.0.0.1", "--host", help="interface to bind (default: loopback only)"),
        port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port"),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
        threads: int = typer.Option(0, "--threads", min=0, help="torch intra-op threads (0 = torch default)"),
    ) -> None:
        """Serve /recommend, /explain, /tags, /items/{id} and /health for a run (OpenAPI at /docs)."""
        from llmrec.serve import serve

        if not (run / "run.json").is_file():
            raise typer.BadParameter(f"{run} is not a run directory (no run.json)", param_hint="--run")
        serve(str(run), host=host, port=port, log_level=log_level, threads=threads)
