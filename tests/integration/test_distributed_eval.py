"""Distributed evaluation (2 processes, torchrun, CPU/gloo) gives exactly the 1-process result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]

# A toy scorer whose scores depend only on the user id, on an uneven number of queries (13 over
# 2 processes: shards of 7 and 6) with ties and history exclusion; also a top-K ranker.
WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from accelerate import Accelerator
    from llmrec.data.schema import EvalCase, UserSequence
    from llmrec.evaluation.evaluate import evaluate

    NUM_ITEMS = 40

    def table(user):
        return np.random.default_rng(int(user)).integers(0, 8, NUM_ITEMS).astype(np.float32)

    class Scorer:
        def score(self, histories):
            return torch.tensor(np.stack([table(h.user_id) for h in histories]))

    class Ranker:
        def rank(self, histories, k, exclude):
            rows = [[i for i in np.argsort(-table(h.user_id), kind="stable") if i not in ex][:k]
                    for h, ex in zip(histories, exclude)]
            return torch.tensor(rows), torch.zeros(len(rows), k)

    def cases():
        out = []
        for u in range(13):
            hist = tuple(int(i) for i in np.random.default_rng(100 + u).choice(NUM_ITEMS, 5, replace=False))
            target = next(i for i in range(u, u + NUM_ITEMS) if i % NUM_ITEMS not in hist) % NUM_ITEMS
            out.append(EvalCase(str(u), UserSequence(str(u), hist, (0,) * 5, ("rate",) * 5, (None,) * 5), target))
        return out

    def run(accelerator):
        out = {}
        for name, model in (("scorer", Scorer()), ("ranker", Ranker())):
            sampled = 10 if name == "scorer" else 0
            r = evaluate(model, cases(), NUM_ITEMS, batch_size=3, sampled_negatives=sampled, seed=5, accelerator=accelerator)
            out[name] = {"metrics": r.metrics, "ranks": r.ranks.tolist(), "top": r.top_items.tolist(),
                         "users": r.user_ids, "sampled": None if r.sampled_ranks is None else r.sampled_ranks.tolist()}
        return out

    if __name__ == "__main__":
        accelerator = Accelerator() if sys.argv[1] == "distributed" else None
        result = run(accelerator)
        rank = accelerator.process_index if accelerator else 0
        with open(f"{sys.argv[2]}.{sys.argv[1]}.{rank}.json", "w") as handle:
            json.dump({"result": result, "world": accelerator.num_processes if accelerator else 1}, handle)
        if accelerator is not None:
            accelerator.wait_for_everyone()
            torch.distributed.destroy_process_group()  # a clean gloo shutdown (no abort at exit)
    """
)


@pytest.mark.distributed
def test_two_process_evaluation_matches_one_process(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER, encoding="utf-8")
    prefix = str(tmp_path / "out")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, str(worker), "single", prefix], check=True, env=env, timeout=60)
    launch = [torchrun, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), str(worker),
              "distributed", prefix]
    done = subprocess.run(launch, env=env, timeout=100, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[:4000]
    single = json.loads(Path(f"{prefix}.single.0.json").read_text())["result"]
    for rank in (0, 1):
        payload = json.loads(Path(f"{prefix}.distributed.{rank}.json").read_text())
        assert payload["world"] == 2
        for name in ("scorer", "ranker"):
            got, expected = payload["result"][name], single[name]
            assert got["users"] == expected["users"] and got["ranks"] == expected["ranks"]
            assert got["top"] == expected["top"] and got["sampled"] == expected["sampled"]
            for key, value in expected["metrics"].items():
                assert np.isclose(got["metrics"][key], value), (name, key)
    assert len(single["scorer"]["ranks"]) == 13
