"""scripts/device_pack.py and scripts/device_run.py: the split GGUF joins to the verified file, a
corrupted part is refused, a seed that would overrun the budget is not started, and each seed's run
is re-ranked on both splits into its report (no GPU needed)."""

from __future__ import annotations

import argparse
import subprocess
import tarfile
from pathlib import Path

import pytest

from llmrec.assets import MANIFEST, file_checks
from llmrec.io import write_json
from scripts import device_run
from scripts.device_pack import pack_assets


def _entry(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    write_json(root / MANIFEST, {"asset": root.name, "files": file_checks(root)})
    return root


def _pack(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A cache like the real one, packed by device_pack.py: (pack b, work holding part 1, GGUF bytes)."""
    gguf = bytes(range(256)) * 40 + b"tail"
    model = _entry(tmp_path / "cache" / device_run.MODEL, {"m.gguf": gguf})
    data = _entry(tmp_path / "cache" / device_run.DATA, {"ml-100k.inter": b"user_id:token\titem_id:token\n1\t2\n"})
    a, b = tmp_path / "pack" / "a", tmp_path / "pack" / "b"
    (a / "whl").mkdir(parents=True)
    (a / "whl" / "x.whl").write_bytes(b"w" * 1000)  # the wheels travel in call 1, so part 1 is the shorter
    pack_assets(model, data, a, b)
    return b, a, gguf


def test_the_two_parts_join_to_the_verified_gguf(tmp_path: Path) -> None:
    pack, work, gguf = _pack(tmp_path)
    part1, part2 = (work / "gguf.part1").stat().st_size, (pack / "gguf.part2").stat().st_size
    assert part1 + part2 == len(gguf) and part1 < part2  # evened out with the wheels beside part 1
    device_run.assemble_cache(pack, work, tmp_path / "device-cache")
    assert (tmp_path / "device-cache" / device_run.MODEL / "m.gguf").read_bytes() == gguf
    assert (tmp_path / "device-cache" / device_run.DATA / "ml-100k.inter").is_file()


def test_a_corrupted_part_is_refused_before_anything_trains(tmp_path: Path) -> None:
    pack, work, _ = _pack(tmp_path)
    part = bytearray((pack / "gguf.part2").read_bytes())
    part[7] ^= 0xFF
    (pack / "gguf.part2").write_bytes(bytes(part))
    with pytest.raises(SystemExit, match="sha256"):
        device_run.assemble_cache(pack, work, tmp_path / "device-cache")


def test_a_seed_that_would_overrun_the_budget_is_not_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        report = Path(cmd[cmd.index("--out") + 1])
        report.mkdir(parents=True)
        (report / "results.json").write_text("{}")
        clock[0] += 100.0  # every seed takes 100 s
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(device_run, "REPO", tmp_path)
    monkeypatch.setattr(device_run.subprocess, "run", fake_run)
    monkeypatch.setattr(device_run.time, "monotonic", lambda: clock[0])
    args = argparse.Namespace(seeds="0,1,2", budget_s=250.0, name="gpu", config="c.yaml", only="pop,sasrec", overrides=["eval.max_users=5"],
                              rerank_set=[])
    out = tmp_path / "out"
    out.mkdir()
    device_run.run_seeds(args, {}, out, out / "device_run.log")

    assert [c[c.index("--seeds") + 1] for c in calls] == ["0", "1"]  # 100 + 100 + 100 > 250: seed 2 waits
    assert calls[0][-3:] == ["--only", "pop,sasrec", "eval.max_users=5"]
    assert sorted(p.name for p in out.glob("*.tar.gz")) == ["gpu-seed0.tar.gz", "gpu-seed1.tar.gz"]
    with tarfile.open(out / "gpu-seed1.tar.gz") as tar:
        assert "gpu-seed1/results.json" in tar.getnames()
    assert "seed 2 not started" in (out / "device_run.log").read_text()


def test_each_seed_is_reranked_on_both_splits_into_its_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], cwd: Path, **_: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        target = Path(cmd[cmd.index("--out") + 1])
        target.mkdir(parents=True)
        (target / ("metrics.json" if "evaluate_run.py" in cmd[1] else "results.json")).write_text("{}")
        return subprocess.CompletedProcess(cmd, 1 if "test" in cmd and "evaluate_run.py" in cmd[1] else 0)

    monkeypatch.setattr(device_run, "REPO", tmp_path)
    monkeypatch.setattr(device_run.subprocess, "run", fake_run)
    args = argparse.Namespace(seeds="3", budget_s=1e9, name="gpu", config="c.yaml", only="", overrides=[],
                              rerank_run="runs/llm", rerank_set=[device_run.ATTEMPT_21])
    out = tmp_path / "out"
    out.mkdir()
    device_run.run_seeds(args, {}, out, out / "device_run.log")

    reranks = [c for c in calls if c[1] == "scripts/evaluate_run.py"]
    assert [c[c.index("--split") + 1] for c in reranks] == ["valid", "test"]
    assert all(c[c.index("--run") + 1] == str(tmp_path / "runs/llm-seed3") for c in reranks)
    assert all(c[c.index("--set") + 1] == "catalog_head.history_views=[20,17,14,11,8,5]" for c in reranks)
    with tarfile.open(out / "gpu-seed3.tar.gz") as tar:  # a failed re-ranking loses nothing else
        assert {"gpu-seed3/results.json", "gpu-seed3/rerank-valid/metrics.json"} <= set(tar.getnames())
    assert "rerank on test failed" in (out / "device_run.log").read_text()
