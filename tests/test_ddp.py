"""Distributed training: two CPU processes (gloo) launched by torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from a2d2c.engine import load_checkpoint

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "src"), str(HERE)]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(HERE / "_ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world"] == 2 and report["global_step"] == 8  # 2 epochs x 4 steps
    assert report["max_param_diff"] == 0.0  # the replicas stayed identical
    assert report["saved_equals_rank0"]  # and what was saved is that model
    assert report["rng_streams_differ"]  # point sampling: seed + rank
    assert report["resume_exact"]  # stop after 3 steps + resume == uninterrupted
    # EMA + mixup/cutmix + accumulation: resumed mid-epoch == uninterrupted, EMA included
    assert report["features_resume_exact"] and report["ema_differs_from_raw"]
    # evaluation shards without padding and sums over ranks: all 15 images, once
    assert report["eval"] == [[15, report["eval"][0][1]]] * 2
    assert report["eval"][0][1] == report["final_val_top1"]
    # only rank 0 wrote: one metrics row per epoch, and the checkpoint says so
    run = tmp_path / "run"
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    # the 2-process checkpoint evaluates the same in one process
    from a2d2c.engine import evaluate_checkpoint

    single = evaluate_checkpoint(run / "last.pt")
    assert single["samples"] == 15 and single["top1"] == report["final_val_top1"]
