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
    # the recipe features under DDP: EMA, mixup + cutmix and gradient accumulation (4
    # batches per epoch and rank = 2 optimizer steps), stopped after the first optimizer
    # step (mid-epoch) and resumed: bitwise the uninterrupted run, raw and EMA weights
    feats = {"data": {"val_samples": 15, "mixup_alpha": 0.4, "cutmix_alpha": 1.0},
             "optim": {"accum_steps": 2}, "ema": {"decay": 0.9}}
    full = fit(tiny_config(out / "feat", **feats))
    fstop = StopRequest()
    fpart = fit(tiny_config(out / "feat_split", **feats), stop=fstop,
                on_step=lambda g: g == 1 and rank == 0 and fstop.request())
    fres = fit(tiny_config(out / "feat_split", **feats), resume=out / "feat_split" / "last.pt")
    ema_full = load_checkpoint(out / "feat" / "last.pt")["ema"]
    ema_res = load_checkpoint(out / "feat_split" / "last.pt")["ema"]
    feat_exact = fpart.status == "interrupted" and all(
        torch.equal(v, fres.model.state_dict()[k]) for k, v in full.model.state_dict().items())
    feat_exact = feat_exact and full.global_step == 4 and ema_full["calls"] == 4 and all(
        torch.equal(v, ema_res["module"][k]) for k, v in ema_full["module"].items())
    ema_moved = any(not torch.equal(ema_full["module"]["module." + k], v)
                    for k, v in full.model.state_dict().items() if v.is_floating_point())
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
            "features_resume_exact": feat_exact,
            "ema_differs_from_raw": ema_moved,
        }
        (out / "report.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
