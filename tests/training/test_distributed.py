"""torchrun with two CPU processes (gloo): training finishes and both ranks hold the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from medsynth.models.artifact import load_model

DRIVER = Path(__file__).with_name("ddp_driver.py")


def test_two_process_gloo_training_agrees(phantoms_2d, tiny_cfg, tmp_path):
    cfg = tiny_cfg(phantoms_2d, tmp_path, stage1={"grad_accum": 2})
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    reports = tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(DRIVER),
            str(config),
            str(reports),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((reports / "rank0.json").read_text())
    r1 = json.loads((reports / "rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["sha256"] == r1["sha256"], "ranks disagree on the final weights"
    # Rank 0 alone logs and writes the model directory.
    assert proc.stdout.count("[stage2] step 4/4") == 1
    model = load_model(tmp_path / "model")
    assert model.spatial_dims == 2
