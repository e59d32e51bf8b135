"""Pack what a GPU run of ``llmrec benchmark`` needs beside the repository, for a machine with no network.

Launch (here, where the assets are cached and PyPI is reachable)::

    python scripts/device_pack.py                 # writes .device/a and .device/b (git-ignored)

The lent GPU machine takes at most 64 MiB per call and keeps ``/tmp`` only between back-to-back
calls, so the 98 MB SmolLM2 GGUF travels in two halves:

- ``.device/a``: the GGUF's first part and the wheels its image lacks (``--wheel``; pure Python);
- ``.device/b``: the GGUF's second part, both cache entries' manifests and the ML-100K files.

``scripts/device_run.py`` unpacks them there (``--stage a``, then ``--stage b``) and verifies every
file against the cache manifests (sha256) before anything trains.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from llmrec.assets import MANIFEST, fetch

# Missing from the device image (its package list in the device tool's KINDS.md), or there in another
# version than the one llmrec is tested with here. transformers stays the image's own: 5.25 needs a newer
# huggingface-hub and the ``kernels`` package, ~17 MB more per call.
WHEELS = ("datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "gguf==0.19.0", "peft==0.21.2", "accelerate==1.16.0",
          "rapidfuzz==3.14.6", "bm25s==0.3.16")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
LIMIT = 64 * 2**20  # one call's working tree, carried paths included
MODEL, DATA = "smollm2-135m-instruct", "ml-100k"


def download_wheels(specs: list[str], into: Path, python_version: str) -> None:
    """``pip download --no-deps`` of ``specs`` for CPython ``python_version`` on x86-64 Linux."""
    into.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           python_version, "--implementation", "cp", "-d", str(into)]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True)


def split_file(path: Path, first: Path, second: Path, first_size: int) -> None:
    """Write ``path``'s first ``first_size`` bytes to ``first`` and the rest to ``second``."""
    with path.open("rb") as source:
        first.write_bytes(source.read(first_size))
        second.write_bytes(source.read())


def tree_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def pack_assets(model: Path, data: Path, a: Path, b: Path) -> None:
    """Split ``model``'s GGUF between ``a`` and ``b`` and copy both cache entries' files into ``b``.

    ``a`` already holds whatever else travels with the first call (the wheels): the split point
    evens the two payloads out, since each call also carries the repository.
    """
    ggufs = sorted(model.glob("*.gguf"))
    if len(ggufs) != 1:
        raise SystemExit(f"expected one .gguf in {model}, found {len(ggufs)}")
    data_files = [p for p in data.iterdir() if p.is_file()]
    rest = sum(p.stat().st_size for p in data_files) + (model / MANIFEST).stat().st_size
    gguf_size = ggufs[0].stat().st_size
    first = max(1, min(gguf_size - 1, (gguf_size + rest - tree_size(a)) // 2))
    a.mkdir(parents=True, exist_ok=True)
    (b / MODEL).mkdir(parents=True)
    (b / DATA).mkdir()
    split_file(ggufs[0], a / "gguf.part1", b / "gguf.part2", first)
    shutil.copy2(model / MANIFEST, b / MODEL / MANIFEST)
    for path in data_files:
        shutil.copy2(path, b / DATA / path.name)
    (b / "gguf.name").write_text(ggufs[0].name + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".device"), help="pack directory (default: .device)")
    parser.add_argument("--wheel", action="append", default=None, help=f"pip spec to carry (default: {', '.join(WHEELS)})")
    parser.add_argument("--python-version", default="3.12", help="the device's CPython (default: 3.12)")
    args = parser.parse_args(argv)

    model, data = fetch(MODEL), fetch(DATA)  # verified against their manifests (sha256) by fetch
    if args.out.exists():
        shutil.rmtree(args.out)
    a, b = args.out / "a", args.out / "b"
    download_wheels(list(args.wheel or WHEELS), a / "whl", args.python_version)
    pack_assets(model, data, a, b)
    for part in (a, b):
        size = tree_size(part)
        print(f"{part}: {size / 2**20:.1f} MiB" + ("  (over one call's 64 MiB with the repository!)" if size > LIMIT - 4 * 2**20 else ""))


if __name__ == "__main__":
    main()
