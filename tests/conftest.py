"""Test-wide settings: offline, CPU, few threads, and the shared tiny-model fixtures."""

from __future__ import annotations

import os

# Hub look-ups must fail fast instead of timing out: every test runs offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

from tests.tiny import FIXTURE_TITLES, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained on the fixture titles (built offline, in ~1 s)."""
    return make_tokenizer(FIXTURE_TITLES)
