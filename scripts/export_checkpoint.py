"""Export a finished run with the weights of another checkpoint, or the mean of several.

Launch::

    # the last step's weights of a run that kept an earlier (best-validation) epoch
    python scripts/export_checkpoint.py runs/ml100k-smollm2-catalog-hidden-seed1 \\
        --checkpoint runs/ml100k-smollm2-catalog-hidden-seed1/checkpoints/step-2088 --out runs/seed1-last
    # checkpoint averaging: the mean of epochs 2 and 3 (runs since session 18 keep every epoch's end)
    python scripts/export_checkpoint.py runs/RUN --checkpoint runs/RUN/checkpoints/epoch-2-trainable.safetensors \\
        --checkpoint runs/RUN/checkpoints/epoch-3-trainable.safetensors --out runs/RUN-mean23
    # or the mean of the best epoch and the last step
    python scripts/export_checkpoint.py runs/RUN --checkpoint runs/RUN/checkpoints/best-trainable.safetensors \\
        --checkpoint runs/RUN/checkpoints/step-2088 --out runs/RUN-mean

The new directory is a complete run: ``llmrec evaluate --run``, ``recommend``, ``explain`` and
``serve`` load it as they load the original (see :mod:`llmrec.training.export`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmrec.training.export import export_checkpoints


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="finished run directory")
    parser.add_argument("--checkpoint", type=Path, action="append", required=True,
                        help="step-N checkpoint directory or trainable .safetensors file (repeat to average)")
    parser.add_argument("--out", type=Path, required=True, help="new run directory (must not exist)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoints(args.run, args.checkpoint, args.out)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(f"exported {len(args.checkpoint)} checkpoint(s) of {args.run} to {out}")


if __name__ == "__main__":
    main()
