"""Run ``llmrec benchmark`` on a lent GPU machine from what ``scripts/device_pack.py`` packed.

Two back-to-back calls of the device tool (``/tmp`` there lasts only while the machine stays warm)::

    # call 1, carry [".device/a"]: wheels into /tmp/llmrec-device/site, the GGUF's first part aside
    python3 scripts/device_run.py --stage a
    # call 2, carry [".device/b"]: join and verify the assets, then one benchmark command per seed
    python3 scripts/device_run.py --stage b --seeds 0,1,2,3,4 --budget-s 540

Stage b writes into ``$OUT`` (what comes back): ``device_run.log`` (every command's output),
``env.json`` (versions, GPU) and, after each finished seed, ``<name>-seed<N>.tar.gz`` holding that
seed's report directory (results.json/.md, ranks/). With ``--rerank-set``, each seed's
``--rerank-run`` is also ranked on both splits with those inference settings (attempt 21: the six
ranking windows), into ``rerank-valid/`` and ``rerank-test/`` of the same report. A seed is started
only if the one before it would still fit in ``--budget-s``, so a run cut short keeps every
finished seed. ``--rehearse``
does stage b here, on CPU, with this environment's packages (no wheels, no CUDA check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/llmrec-device")
MODEL, DATA = "smollm2-135m-instruct", "ml-100k"
ATTEMPT_21 = "catalog_head.history_views=[20,17,14,11,8,5]"  # BENCHMARKS.md, attempt 21
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONUNBUFFERED": "1", "LLMREC_ASSET_SOURCES": "wheel"}


def log_line(log: Path | None, text: str) -> None:
    print(text, flush=True)
    if log is not None:
        with log.open("a", encoding="utf-8") as handle:
            handle.write(text + "\n")


def stage_a(pack: Path, work: Path) -> None:
    """Install the carried wheels into ``work/site`` and set the GGUF's first part aside."""
    work.mkdir(parents=True, exist_ok=True)
    wheels = sorted(str(p) for p in (pack / "whl").glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
                    "--upgrade", "--target", str(work / "site"), *wheels], check=True)
    shutil.copy2(pack / "gguf.part1", work / "gguf.part1")
    print(f"stage a: {len(wheels)} wheels in {work / 'site'}, {(work / 'gguf.part1').stat().st_size} bytes of GGUF aside")


def assemble_cache(pack: Path, work: Path, cache: Path) -> None:
    """Join the GGUF, lay out both cache entries and verify every file against its manifest's sha256."""
    sys.path.insert(0, str(REPO))
    from llmrec.assets import verify_entry

    name = (pack / "gguf.name").read_text(encoding="utf-8").strip()
    model = cache / MODEL
    model.mkdir(parents=True, exist_ok=True)
    with (model / name).open("wb") as out:
        for part in (work / "gguf.part1", pack / "gguf.part2"):
            with part.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 24)
    shutil.copytree(pack / MODEL, model, dirs_exist_ok=True)
    shutil.copytree(pack / DATA, cache / DATA, dirs_exist_ok=True)
    for entry in (model, cache / DATA):
        problem = verify_entry(entry, full=True)
        if problem:
            raise SystemExit(f"{entry}: {problem} (was stage a run in the call just before, on the same warm machine?)")


def environment(env: dict[str, str]) -> dict[str, object]:
    """Versions and GPU of the interpreter the benchmark runs under (with ``env``'s PYTHONPATH)."""
    probe = ("import json, torch, transformers, peft, accelerate, datasets, pyarrow, gguf\n"
             "print(json.dumps({'python': __import__('sys').version.split()[0], 'torch': torch.__version__,"
             " 'cuda': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,"
             " **{m.__name__: m.__version__ for m in (transformers, peft, accelerate, datasets, pyarrow)},"
             " 'gguf': getattr(gguf, '__version__', 'present')}))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the benchmark's packages do not import:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_seeds(args: argparse.Namespace, env: dict[str, str], out: Path, log: Path) -> None:
    """One ``llmrec benchmark`` per seed, each report tarred into ``out`` as soon as it is written."""
    started, last = time.monotonic(), 0.0
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        elapsed = time.monotonic() - started
        if last and elapsed + last > args.budget_s:
            log_line(log, f"seed {seed} not started: {elapsed:.0f} s used, the last seed took {last:.0f} s, budget {args.budget_s} s")
            break
        report = REPO / "reports" / f"{args.name}-seed{seed}"
        cmd = [sys.executable, "scripts/benchmark.py", "--config", args.config, "--seeds", str(seed), "--out", str(report)]
        cmd += (["--only", args.only] if args.only else []) + list(args.overrides)
        log_line(log, f"== seed {seed}: python {' '.join(cmd[1:])}")
        t0 = time.monotonic()
        with log.open("a", encoding="utf-8") as handle:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            log_line(log, f"seed {seed} failed (rc {done.returncode}) after {time.monotonic() - t0:.0f} s")
            raise SystemExit(done.returncode)
        if args.rerank_set:
            rerank(args, seed, report, env, log)
        last = time.monotonic() - t0
        with tarfile.open(out / f"{args.name}-seed{seed}.tar.gz", "w:gz") as tar:
            tar.add(report, arcname=report.name)
        log_line(log, f"seed {seed} done in {last:.0f} s")


def rerank(args: argparse.Namespace, seed: int, report: Path, env: dict[str, str], log: Path) -> None:
    """Rank ``<rerank_run>-seed<N>`` on valid and test with ``--rerank-set`` into ``report/rerank-<split>``.

    A failure is logged, not raised: the seed's benchmark report still goes back.
    """
    run = REPO / f"{args.rerank_run}-seed{seed}"
    for split in ("valid", "test"):
        cmd = [sys.executable, "scripts/evaluate_run.py", "--run", str(run), "--split", split,
               "--out", str(report / f"rerank-{split}")]
        for setting in args.rerank_set:
            cmd += ["--set", setting]
        log_line(log, f"== seed {seed} rerank: python {' '.join(cmd[1:])}")
        with log.open("a", encoding="utf-8") as handle:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            log_line(log, f"seed {seed} rerank on {split} failed (rc {done.returncode})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("a", "b"), required=True)
    parser.add_argument("--pack", type=Path, default=None, help="the carried pack (default: .device/<stage>)")
    parser.add_argument("--work", type=Path, default=WORK, help=f"scratch directory kept between the calls (default: {WORK})")
    parser.add_argument("--config", default="configs/ml100k/benchmark-llm-gpu.yaml", help="benchmark YAML")
    parser.add_argument("--only", default="pop,gru4rec-window20,sasrec-window20,smollm2-catalog-masked-gpu,smollm2-catalog-masked-full",
                        help="rows to run (llmrec benchmark --only; empty: every row)")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="seeds, one benchmark command each, in this order")
    parser.add_argument("--name", default="ml100k-llm-gpu", help="report name: reports/<name>-seed<N>")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no seed that would end past this (s)")
    parser.add_argument("--rerank-run", default="runs/ml100k-smollm2-catalog-masked-gpu",
                        help="run directory (without -seed<N>) ranked again after each seed")
    parser.add_argument("--rerank-set", action="append", default=None,
                        help="inference setting of the re-ranking, key.sub=value, repeatable (default: attempt 21's "
                             f"{ATTEMPT_21}; pass --no-rerank to skip)")
    parser.add_argument("--no-rerank", action="store_true", help="no re-ranking after the seeds")
    parser.add_argument("--rehearse", action="store_true", help="stage b here: this environment, CPU allowed")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides passed to llmrec benchmark")
    args = parser.parse_args(argv)
    args.rerank_set = [] if args.no_rerank else (args.rerank_set or [ATTEMPT_21])
    pack = args.pack or REPO / ".device" / args.stage
    if args.stage == "a":
        stage_a(pack, args.work)
        return

    out = Path(os.environ.get("OUT") or args.work / "out")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "device_run.log"
    cache = args.work / "cache"
    assemble_cache(pack, args.work, cache)
    env = {**os.environ, **OFFLINE, "LLMREC_CACHE": str(cache)}
    paths = [str(REPO)] if args.rehearse else [str(args.work / "site"), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    info = environment(env)
    (out / "env.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log_line(log, f"environment: {json.dumps(info)}")
    if not args.rehearse and not info.get("cuda"):
        raise SystemExit("no CUDA device visible to torch: refusing to train the GPU recipe on CPU")
    run_seeds(args, env, out, log)


if __name__ == "__main__":
    main()
