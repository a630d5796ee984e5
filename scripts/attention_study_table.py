"""The attention studies' table: accuracy next to the attention diagnostics (issue 16).

    PYTHONPATH=src python3 scripts/attention_study_table.py attention attention_cluttered

For every finished run of a study (its record under ``results/<study>/``) this rebuilds
the trained model from ``<run>/last.pt`` (the weights the recorded accuracy is for), runs
:func:`a2d2c.diagnostics.attention_stats` on the first ``--samples`` test images (batches
of 128) and caches the result as ``results/<study>/diagnostics/<variant>_seed<k>.json``
(committed, so the table is rebuilt without the checkpoints). It then writes
``results/<study>_diagnostics.md``: per variant the seeds, top-1, the paired difference
to the study's baseline (mean ± sd over the common seeds, two-sided paired t-test), the
layer-mean diagnostics of the A²D²C attention π (mean over seeds), and the mean
learning curve (test top-1 after each epoch) from the runs' ``metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from a2d2c.study import load_study
from a2d2c.study.stats import binomial_se, mean_std, paired_difference

COLS = ("entropy_ratio", "mean_max", "sample_sd", "channel_sd", "output_change")


def diagnose(record: dict, cache: Path, samples: int) -> dict | None:
    if cache.is_file():
        return json.loads(cache.read_text())
    ckpt = Path(record["output_dir"]) / "last.pt"
    if record.get("madds_form") == "no dynamic layers" or not ckpt.is_file():
        return None
    from a2d2c.cli.inspect import inspect_checkpoint

    report, _cfg = inspect_checkpoint(str(ckpt), {"train": {"threads": 1}}, samples=samples,
                                      batch_size=128)
    out = {"samples": report.samples, "summary": report.summary(), "rows": report.to_dicts()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(out, indent=1) + "\n")
    return out


def curve(record: dict) -> list[float]:
    path = Path(record["output_dir"]) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r["val_top1"] for r in rows if r.get("val_top1") is not None]


def table(name: str, results: Path, samples: int) -> str:
    spec = load_study(name)
    recs: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted((results / name).glob("*_seed*.json")):
        r = json.loads(path.read_text())
        if r.get("status", "completed") == "completed":
            recs[r["variant"]][r["seed"]] = r
    base = recs.get(spec.baseline, {})
    curves_dir = results / name / "curves"
    curves_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {spec.title}: accuracy and attention diagnostics", "",
             f"**Reduced:** {spec.reduced}", "",
             f"Paired differences are variant − `{spec.baseline}` over the seeds both have "
             "finished (mean ± sd, two-sided paired t-test). Diagnostics: the A²D²C "
             f"attention π of every dynamic layer on the first {samples} test images, "
             "averaged over the layers, then over the seeds (H/logK: entropy ratio, 1 = "
             "uniform; sd samples: between-sample sd, 0 = not input-dependent; out change: "
             "relative change of a layer's output with π frozen to its batch mean of 128).",
             "",
             "| variant | params | seeds | top-1 (%) | Δ vs `" + spec.baseline + "` | H/logK | "
             "mean max | sd samples | sd channels | out change |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    curve_lines = []
    for variant in spec.variants:
        runs = recs.get(variant, {})
        if not runs:
            lines.append(f"| `{variant}` | – | 0 | not run | | | | | | |")
            continue
        seeds = sorted(runs)
        accs = [runs[s]["top1"] for s in seeds]
        m, sd = mean_std(accs)
        common = [s for s in seeds if s in base]
        if variant == spec.baseline or not common:
            delta = "—"
        else:
            delta = paired_difference([runs[s]["top1"] for s in common],
                                      [base[s]["top1"] for s in common]).fmt()
            delta += f" [{len(common)}]"
        diag: dict[str, list[float]] = defaultdict(list)
        for s in seeds:
            d = diagnose(runs[s], results / name / "diagnostics" / f"{variant}_seed{s}.json",
                         samples)
            if d and "pi" in d["summary"]:
                for c in COLS:
                    if d["summary"]["pi"][c] is not None:
                        diag[c].append(d["summary"]["pi"][c])
        cells = [f"{sum(diag[c]) / len(diag[c]):.4f}" if diag[c] else "–" for c in COLS]
        params = runs[seeds[0]]["params"] / 1e6
        lines.append(f"| `{variant}` | {params:.3f}M | {len(seeds)} ({','.join(map(str, seeds))})"
                     f" | {m:.2f} ± {sd:.2f} | {delta} | " + " | ".join(cells) + " |")
        cs = [curve(runs[s]) for s in seeds]
        cs = [c for c in cs if c]
        if cs:
            n = min(len(c) for c in cs)
            mean_curve = [sum(c[i] for c in cs) / len(cs) for i in range(n)]
            (curves_dir / f"{variant}.json").write_text(json.dumps(
                {"seeds": seeds, "per_seed": cs, "mean": mean_curve}) + "\n")
            curve_lines.append(f"| `{variant}` | " + " | ".join(f"{v:.2f}" for v in mean_curve)
                               + " |")
    n_test = next((r["test_samples"] for v in recs.values() for r in v.values()), None)
    if n_test:
        lines += ["", f"Noise floor: one accuracy on {n_test} test images has a sampling "
                  f"error of about {binomial_se(80.0, n_test):.2f} points at 80% "
                  "(sqrt(p(1-p)/n)); differences below that and the seed spread are not "
                  "measurable."]
    if curve_lines:
        epochs = max(line.count("|") - 2 for line in curve_lines)
        lines += ["", "Learning curves (test top-1 after each epoch, mean over the finished "
                  "seeds; the cosine schedule ends at the last epoch):", "",
                  "| variant | " + " | ".join(f"ep {i + 1}" for i in range(epochs)) + " |",
                  "|---|" + "---|" * epochs, *curve_lines]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+")
    p.add_argument("--results", default="results")
    p.add_argument("--samples", type=int, default=512)
    a = p.parse_args()
    for name in a.studies:
        md = table(name, Path(a.results), a.samples)
        out = Path(a.results) / f"{name}_diagnostics.md"
        out.write_text(md)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
