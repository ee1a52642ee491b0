"""`torchrun --nproc_per_node=2 -m medsynth.cli generate ...` on CPU (gloo) equals one process."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from medsynth.protocol import generate


def _tree(out: Path) -> dict[str, str]:
    files = {}
    for p in sorted(out.rglob("*")):
        if not p.is_file() or p.name == "summary.json":
            continue
        rel = p.relative_to(out).as_posix()
        if p.suffix == ".jsonl":
            lines = [json.loads(x) for x in p.read_text().splitlines()]
            files[rel] = json.dumps([{k: v for k, v in r.items() if k != "created"} for r in lines])
        else:
            files[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return files


def test_two_ranks_shard_batches_and_merge_to_the_single_process_output(
    model_dirs, make_protocol, write_protocol, tmp_path
):
    doc = make_protocol(
        model_dirs["2d"],
        output={"dir": "out", "formats": ["dicom", "nifti"]},
        sampler={"method": "dpm++", "steps": 2, "guidance_scale": 3.0, "batch_size": 2},
        quotas=[
            {"pathology": "normal", "modality": "CT", "count": 3},
            {"pathology": "mass", "modality": "MR", "count": 3},
        ],
    )
    protocol = write_protocol(doc)
    single = tmp_path / "single"
    generate(protocol, out=single)

    sharded = tmp_path / "sharded"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "medsynth.cli",
        "generate",
        str(protocol),
        "--out",
        str(sharded),
        "--json",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # Batches [n0 n1] [n2] [m0 m1] [m2]: rank 0 took batches 0 and 2, rank 1 batches 1 and 3.
    cases = [json.loads(line) for line in proc.stdout.splitlines() if '"event": "case"' in line]
    assert sorted(e["case_id"] for e in cases) == sorted(
        ["normal-CT-00000", "normal-CT-00001", "normal-CT-00002", "mass-MR-00000", "mass-MR-00001", "mass-MR-00002"]
    )
    assert not list(sharded.glob("*.rank-*.jsonl")), "rank parts are merged and removed"
    assert _tree(sharded) == _tree(single)
    summary = json.loads((sharded / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["written"] == 6
