"""Run by tests/test_ddp.py under ``torchrun --nproc_per_node=2`` (gloo, CPU)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from _engine_helpers import tiny_config
from a2d2c.engine import StopRequest, evaluate_checkpoint, fit, load_checkpoint


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    # global batch 8 = 4 per process; 32 images -> 4 steps per epoch; 15 val images
    cfg = tiny_config(out / "run", data={"val_samples": 15})
    res = fit(cfg)
    assert dist.is_initialized()  # fit leaves a group it did not create alone
    sd = res.model.state_dict()
    flat = torch.cat([v.detach().double().flatten() for v in sd.values()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    rng = torch.get_rng_state()[:64].double()
    rngs = [torch.empty_like(rng) for _ in range(world)]
    dist.all_gather(rngs, rng)
    # interrupted after 3 steps (only rank 0 is asked: the ranks agree on stopping) and
    # resumed: bitwise the uninterrupted run, every rank continuing its own RNG stream
    split = tiny_config(out / "split", data={"val_samples": 15})
    stop = StopRequest()
    part = fit(split, stop=stop, on_step=lambda g: g == 3 and rank == 0 and stop.request())
    resumed = fit(split, resume=out / "split" / "last.pt")
    exact = part.global_step == 3 and all(
        torch.equal(v, resumed.model.state_dict()[k]) for k, v in sd.items())
    ev = evaluate_checkpoint(out / "run" / "last.pt")
    evs = [None] * world
    dist.all_gather_object(evs, (ev["samples"], ev["top1"]))
    if rank == 0:
        saved = load_checkpoint(out / "run" / "last.pt")["model"]
        report = {
            "world": world,
            "global_step": res.global_step,
            "max_param_diff": max(float((g - gathered[0]).abs().max()) for g in gathered),
            "saved_equals_rank0": all(torch.equal(saved[k], v) for k, v in sd.items()),
            "rng_streams_differ": not torch.equal(rngs[0], rngs[1]),
            "eval": evs,
            "final_val_top1": res.final_metrics["val_top1"],
            "resume_exact": exact,
        }
        (out / "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
