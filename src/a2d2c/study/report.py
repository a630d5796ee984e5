"""A study's Markdown table and plot (``shared/STUDIES.md``: paired seeds, noise floor)."""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from .runner import RunRecord, StudySpec
from .stats import binomial_se, mean_std, paired_difference

__all__ = ["plot_study", "summarize_study", "write_report"]


def _by_variant(records: list[RunRecord]) -> dict[str, dict[int, RunRecord]]:
    """Completed runs by variant and seed (diverged runs have no accuracy)."""
    out: dict[str, dict[int, RunRecord]] = defaultdict(dict)
    for r in records:
        if r.status == "completed":
            out[r.variant][r.seed] = r
    return out


def _fmt_count(n: float | None, unit: str) -> str:
    if n is None:
        return "–"
    scale = {"M": 1e6, "G": 1e9}[unit]
    return f"{n / scale:.3f}{unit}" if n < 10 * scale else f"{n / scale:.2f}{unit}"


def summarize_study(spec: StudySpec, records: list[RunRecord], command: str = "",
                    note: str = "") -> str:
    """The study's Markdown report: one row per variant, paired to the baseline.

    ``note`` is printed under the table: what a reader must know about this execution
    (the machine, other load on it) that the study file cannot say.
    """
    runs = _by_variant(records)
    diverged: dict[str, list[int]] = defaultdict(list)
    for r in records:
        if r.status != "completed":
            diverged[r.variant].append(r.seed)
    base = runs.get(spec.baseline, {})
    lines = [f"# {spec.title}", ""]
    if spec.notes:
        lines += [spec.notes.strip(), ""]
    if spec.reduced:
        lines += ["**Reduced from the paper's recipe:** " + spec.reduced.strip(), ""]
    if command:
        lines += ["Command:", "", "```bash", command, "```", ""]
    lines += [
        f"Seeds: {spec.seeds}. Paired differences are variant − `{spec.baseline}` over the "
        "seeds both have finished (mean ± sd, two-sided paired t-test).", "",
        "| variant | params | MAdds | top-1 (%) | top-5 (%) | Δ top-1 vs "
        f"`{spec.baseline}` | s/epoch | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    floor = []
    for label in spec.variants:
        seeds = runs.get(label, {})
        if not seeds:
            what = (f"diverged (seeds {sorted(diverged[label])})" if diverged.get(label)
                    else "not run")
            lines.append(f"| `{label}` | – | – | {what} | – | – | – | 0 |")
            continue
        recs = [seeds[s] for s in sorted(seeds)]
        t1, s1 = mean_std([r.top1 for r in recs])
        t5, s5 = mean_std([r.top5 for r in recs])
        common = sorted(set(seeds) & set(base))
        if label == spec.baseline:
            delta = "—"
        elif common:
            delta = paired_difference([seeds[s].top1 for s in common],
                                      [base[s].top1 for s in common]).fmt()
        else:
            delta = "no paired seeds"
        epoch_t = sum(r.epoch_time_s for r in recs) / len(recs)
        lines.append(
            f"| `{label}` | {_fmt_count(recs[0].params, 'M')} | "
            f"{_fmt_count(recs[0].madds, 'G')} | {t1:.2f} ± {s1:.2f} | {t5:.2f} ± {s5:.2f} | "
            f"{delta} | {epoch_t:.1f} | {len(recs)} |"
        )
        if recs[0].test_samples:
            floor.append(binomial_se(t1, recs[0].test_samples))
    lines.append("")
    forms = {label: runs[label][min(runs[label])].madds_form for label in spec.variants
             if runs.get(label) and runs[label][min(runs[label])].madds_form}
    if forms:
        lines.append("MAdds are counted at batch 1 on the path each model executes in eval: "
                     + "; ".join(f"`{k}`: {v}" for k, v in forms.items()) + ".")
        lines.append("")
    if note:
        lines += [note.strip(), ""]
    if floor:
        n = next(r.test_samples for r in records if r.test_samples)
        lines.append(
            f"Noise floor: one accuracy on {n} test images has a sampling error of "
            f"{min(floor):.2f}–{max(floor):.2f} points (sqrt(p(1−p)/n)); differences below "
            "that and below the seed spread are not measurable."
        )
        lines.append("")
    for label, seeds_d in diverged.items():
        lines.append(f"`{label}` diverged (non-finite training loss, the run stopped) with "
                     f"seed(s) {sorted(seeds_d)} under the study's recipe.")
        lines.append("")
    missing = [(v, s) for v in spec.variants for s in spec.seeds
               if s not in runs.get(v, {}) and s not in diverged.get(v, [])]
    if missing:
        lines.append(f"Incomplete: {len(missing)} of {len(spec.variants) * len(spec.seeds)} "
                     "runs have not finished; rerun the command to complete the study.")
        lines.append("")
    return "\n".join(lines)


def plot_study(spec: StudySpec, records: list[RunRecord], path: str | os.PathLike) -> Path:
    """Top-1 per variant (every seed as a dot, mean ± sd as a bar) as a PNG."""
    from .._optional import require

    matplotlib = require("matplotlib", "the study plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _by_variant(records)
    labels = [v for v in spec.variants if runs.get(v)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(labels) + 1.5), 3.8))
    for i, label in enumerate(labels):
        vals = [runs[label][s].top1 for s in sorted(runs[label])]
        mean, std = mean_std(vals)
        color = "tab:gray" if label == spec.baseline else "tab:blue"
        ax.bar(i, mean, color=color, alpha=0.35, width=0.7)
        ax.errorbar(i, mean, yerr=std, color=color, capsize=4, fmt="none")
        ax.scatter([i] * len(vals), vals, color=color, s=14, zorder=3)
    if labels:
        every = [runs[v][s].top1 for v in labels for s in runs[v]]
        lo, hi = min(every), max(every)
        pad = max(0.5, 0.15 * (hi - lo))
        ax.set_ylim(lo - pad, hi + pad)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(spec.title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(spec: StudySpec, records: list[RunRecord],
                 results_dir: str | os.PathLike = "results",
                 command: str = "", note: str = "") -> tuple[Path, Path]:
    """Write ``<results>/<study>.md`` and ``<results>/<study>.png``."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_study(spec, records, out / f"{spec.name}.png")
    md = out / f"{spec.name}.md"
    text = summarize_study(spec, records, command, note)
    text += f"\n![{spec.title}]({png.name})\n"
    md.write_text(text)
    return md, png
