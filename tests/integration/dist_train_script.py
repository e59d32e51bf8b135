"""Worker for test_distributed_train: a tiny LoRA run, launched by torchrun or as one process.

    ACCELERATE_USE_CPU=true torchrun --nproc_per_node 2 tests/integration/dist_train_script.py TOK OUT 2
    python tests/integration/dist_train_script.py TOK OUT 4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from accelerate.utils import set_seed  # noqa: E402

from llmrec.modeling.build import build_model  # noqa: E402
from llmrec.training.loop import train  # noqa: E402
from tests.unit.train_helpers import tiny_data, tiny_run_config  # noqa: E402


def main(tok_dir: str, out: str, batch_size: int) -> None:
    torch.set_num_threads(1)
    cfg = tiny_run_config(Path(out), Path(tok_dir), batch_size=batch_size, max_steps=6, warmup_ratio=0.2)
    cfg.lora.dropout = 0.0  # dropout masks differ between 1 and 2 processes; the math must not
    set_seed(11)
    model, tokenizer = build_model(cfg.model, cfg.lora)
    result = train(cfg, "dist", model=model, tokenizer=tokenizer, data=tiny_data(tokenizer, 24), device="cpu")
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        (Path(out) / "result.json").write_text(json.dumps({"losses": [h["loss"] for h in result.history],
                                                           "lrs": [h["lr"] for h in result.history],
                                                           "world_size": int(__import__("os").environ.get("WORLD_SIZE", "1"))}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
