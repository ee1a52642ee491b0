"""Run under torchrun by test_distributed.py: train a tiny model, record this rank's final weights.

Usage: torchrun --nproc_per_node=2 ddp_driver.py CONFIG.yaml REPORT_DIR
Each rank writes REPORT_DIR/rank<R>.json with the world size and a SHA-256 of its final
(EMA) weights, so the test can check that the ranks agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from medsynth.training import pipeline


def main(config: str, report_dir: str) -> None:
    built = []
    original = pipeline.LatentDiffusionModel

    class Recording(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    pipeline.LatentDiffusionModel = Recording
    out = pipeline.train(config, progress=False)
    h = hashlib.sha256()
    for k, v in sorted(built[0].state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    rank = int(os.environ["RANK"])
    Path(report_dir, f"rank{rank}.json").write_text(
        json.dumps({"world_size": int(os.environ["WORLD_SIZE"]), "sha256": h.hexdigest(), "out": str(out)})
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
