"""Compare two models user by user on the same evaluation cases (paired difference and its error).

Launch::

    python scripts/compare_ranks.py reports/ml100k-llm/ranks/sasrec-seed0.parquet \\
        reports/ml100k-llm/ranks/smollm2-lora-seed0.parquet --k 10 --out reports/ml100k-llm/paired.json
    # search error of the beam: the same users ranked by beam search and by exact scores
    python scripts/compare_ranks.py reports/diag-full/ranks.parquet reports/diag-beam/ranks.parquet

Prints one row per metric (first file = a, second = b, diff = b - a with the standard error of
the per-user difference) and writes them as JSON when ``--out`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llmrec.evaluation.compare import compare_ranks, load_ranks
from llmrec.io import write_json


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, help="ranks file of the reference model")
    parser.add_argument("b", type=Path, help="ranks file of the model compared with it")
    parser.add_argument("--k", type=int, action="append", help="cut-off(s) (default: 10)")
    parser.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = parser.parse_args(argv)
    a, b = load_ranks(args.a), load_ranks(args.b)
    rows = [row.as_dict() for row in compare_ranks(a, b, ks=args.k or [10])]
    print(f"a = {args.a}\nb = {args.b}\n{rows[0]['users']} users")
    print(f"{'metric':<9} {'a':>8} {'± se':>7} {'b':>8} {'± se':>7} {'b - a':>8} {'± se':>7} {'top-K overlap':>13} {'same rank':>9}")
    for r in rows:
        print(f"{r['metric']:<9} {r['a']:>8.4f} {r['a_se']:>7.4f} {r['b']:>8.4f} {r['b_se']:>7.4f} "
              f"{r['diff']:>+8.4f} {r['diff_se']:>7.4f} {r['overlap']:>13.3f} {r['same_rank']:>9.3f}")
    if args.out:
        write_json(args.out, {"a": str(args.a), "b": str(args.b), "comparisons": rows})


if __name__ == "__main__":
    main()
