"""Named studies: a grid of variants × seeds trained with one recipe, resumable.

A study is a YAML file (shipped: ``a2d2c/configs/studies/<name>.yaml``, or any path)::

    title: Main comparison (Tables 1/4 analogue)
    recipe: ../study_fashion_mnist.yaml      # a training recipe, relative to this file
    seeds: [0, 1, 2]
    baseline: static                         # paired differences are taken to this variant
    reduced: why and how the recipe is smaller than the paper's
    variants:
      static:   {model: {name: resnet18}}
      a2d2c:    {model: {name: resnet18_a2d2c}}
      uniform:  {model: {name: resnet18_a2d2c}, temperature: {start: 1.0e6, end: 1.0e6}}

Each variant is a set of overrides of the recipe (the same keys as ``a2d2c train``'s
``--section.key value``). Runs (checkpoints, metrics) go to
``<runs>/<study>/<variant>/seed<k>/``; each finished run leaves a small record,
``<results>/<study>/<variant>_seed<k>.json``, meant to be committed: a run whose record
exists is never redone, so an interrupted study resumes — in a later session or on
another machine — by running the same command. Runs are ordered seed-major (every
variant of seed 0, then of seed 1, …), so a partial study already holds complete pairs.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "RunRecord",
    "StudyError",
    "StudySpec",
    "list_studies",
    "load_study",
    "record_path",
    "run_study",
    "study_dir",
]



class StudyError(ValueError):
    """An invalid study file or request."""


@dataclass
class StudySpec:
    name: str
    title: str
    recipe: Path
    seeds: list[int]
    baseline: str
    variants: dict[str, dict[str, Any]]
    reduced: str = ""
    notes: str = ""
    path: Path | None = None
    #: optional overrides applied to every variant (before the variant's own)
    common: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    study: str
    variant: str
    seed: int
    top1: float
    top5: float
    test_samples: int
    params: int
    madds: int | None
    epochs: int
    epoch_time_s: float
    wall_s: float
    output_dir: str
    madds_form: str = ""
    #: "completed", or "diverged" (non-finite loss: the run stopped; no accuracy)
    status: str = "completed"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunRecord:
        names = cls.__dataclass_fields__
        return cls(**{k: d[k] for k in names if k in d})


def study_dir(root: str | os.PathLike | None = None) -> Path:
    """``root``, or the folder of the studies shipped in the package."""
    from ..resources import studies_root

    return Path(root) if root is not None else studies_root()


def list_studies(root: str | os.PathLike | None = None) -> list[str]:
    """Names of the study files in ``root`` (default: the shipped studies)."""
    d = study_dir(root)
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=-]{0,99}")


def _check_label(label: Any, path: Path) -> None:
    """A variant label becomes a file and folder name under ``--results``/``--runs``:
    letters, digits and ``_ . + = -`` only (no ``/``, no ``..``), so it cannot escape."""
    if not isinstance(label, str) or not _LABEL.fullmatch(label) or ".." in label:
        raise StudyError(f"{path}: variant label {label!r} is not allowed: use letters, "
                         "digits and _ . + = - (at most 100, starting with a letter or "
                         "digit, no '..'), since it names files under --results and --runs")


def load_study(name_or_path: str | os.PathLike,
               root: str | os.PathLike | None = None) -> StudySpec:
    """Read a study by name (a shipped study, or one in ``root``) or by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = study_dir(root) / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(list_studies(root)) or "none found"
        raise StudyError(f"no study {str(name_or_path)!r} (looked for {path}); known studies: "
                         f"{known}")
    data = yaml.safe_load(path.read_text()) or {}
    allowed = {"title", "recipe", "seeds", "baseline", "variants", "reduced", "notes", "common",
               "extends"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise StudyError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    if "extends" in data:
        # another study (by name, or a path relative to this file): its recipe, seeds,
        # baseline, variants, notes and common overrides, each key given here replacing
        # its own, except `common`, which is merged (this file's values win)
        ref = str(data.pop("extends"))
        ref_path = path.parent / ref if Path(ref).suffix else path.parent / f"{ref}.yaml"
        if ref_path.resolve() == path.resolve():
            raise StudyError(f"{path}: a study cannot extend itself")
        parent = load_study(ref_path)
        inherited = {"recipe": os.path.relpath(parent.recipe, path.parent),
                     "seeds": parent.seeds, "baseline": parent.baseline,
                     "variants": parent.variants, "reduced": parent.reduced,
                     "notes": parent.notes}
        common = _merge(parent.common, data.pop("common", None) or {})
        data = {**inherited, **data, "common": common}
    for key in ("recipe", "variants", "baseline"):
        if key not in data:
            raise StudyError(f"{path}: missing required key {key!r}")
    variants = data["variants"]
    if not isinstance(variants, dict) or not variants:
        raise StudyError(f"{path}: 'variants' must be a non-empty mapping label -> overrides")
    for label, ov in variants.items():
        _check_label(label, path)
        if not isinstance(ov, dict):
            raise StudyError(f"{path}: variant {label!r} must map to a dict of overrides, "
                             f"got {ov!r}")
    if data["baseline"] not in variants:
        raise StudyError(f"{path}: baseline {data['baseline']!r} is not one of the variants "
                         f"{list(variants)}")
    seeds = data.get("seeds", [0, 1, 2])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise StudyError(f"{path}: 'seeds' must be a non-empty list of ints, got {seeds!r}")
    return StudySpec(
        name=path.stem, title=str(data.get("title", path.stem)),
        recipe=(path.parent / data["recipe"]).resolve(), seeds=seeds,
        baseline=data["baseline"], variants=variants, reduced=str(data.get("reduced", "")),
        notes=str(data.get("notes", "")), path=path, common=data.get("common") or {},
    )


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Nested dict merge, ``top`` winning."""
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k),
                                                                             Mapping) else v
    return out


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def overrides_to_args(overrides: Mapping[str, Any]) -> list[str]:
    """Nested overrides → ``a2d2c train`` arguments (``--section.key=value``)."""
    def dump(value: Any) -> str:
        return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()

    return [f"--{k}={dump(v)}" for k, v in _flatten(overrides).items()]


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _default_train(cfg: Any) -> dict[str, Any]:
    """Train one configuration with the engine; returns its last epoch's metrics row
    (``val_top1``, ``val_top5``, ...)."""
    from ..engine import fit

    result = fit(cfg)
    if result.status != "completed":
        raise KeyboardInterrupt(f"run in {result.output_dir} was interrupted; rerun the study "
                                "to resume it")
    return dict(result.final_metrics)


def _profile(cfg: Any) -> tuple[int, int | None, str]:
    """Parameters, MAdds (batch 1, eval) and the dynamic forms counted, of a config's model."""
    from ..data import dataset_info
    from ..engine import build_model
    from ..profiling import count_madds, count_params

    info = dataset_info(cfg.data)
    model = build_model(cfg, info.num_classes, info.in_chans, pretrained=False)
    report = count_madds(model, (info.in_chans, info.img_size, info.img_size))
    return count_params(model), int(report.madds), report.summary()


def _test_samples(cfg: Any) -> int:
    from ..data import build_dataset

    return len(build_dataset(cfg.data.name, "val", cfg.data))


def _epoch_times(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [float(r["epoch_time_s"]) for r in rows if r.get("epoch_time_s") is not None]


def run_study(
    spec: StudySpec,
    *,
    runs_root: str | os.PathLike = "runs/studies",
    results_dir: str | os.PathLike = "results",
    only: Iterable[str] | None = None,
    seeds: Iterable[int] | None = None,
    extra: Iterable[str] = (),
    train_fn: Callable[[Any], dict[str, Any]] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[RunRecord]:
    """Run every missing (variant, seed) of ``spec``; return all records found.

    ``only`` restricts to some variants, ``seeds`` to some seeds, ``extra`` are
    ``--key value`` overrides applied to every run (e.g. ``--train.device=cuda``).
    """
    from ..engine import NonFiniteLossError, load_config

    if log is None:  # the "a2d2c" logger (stdout under the CLI, quiet as a library)
        import logging

        log = logging.getLogger("a2d2c").info

    labels = list(spec.variants) if only is None else list(only)
    bad = [v for v in labels if v not in spec.variants]
    if bad:
        raise StudyError(f"unknown variant(s) {bad} in study {spec.name!r}; variants: "
                         f"{list(spec.variants)}")
    seed_list = spec.seeds if seeds is None else list(seeds)
    train_fn = train_fn or _default_train
    root = Path(runs_root) / spec.name
    # Validate every configuration before the first run starts.
    configs = {}
    for seed in seed_list:
        for label in labels:
            run_dir = root / label / f"seed{seed}"
            args = [*overrides_to_args(spec.common), *overrides_to_args(spec.variants[label]),
                    f"--train.seed={seed}", f"--train.output_dir={run_dir}",
                    # a run without a record was interrupted: it starts afresh over its folder
                    "--train.overwrite=true", *extra]
            configs[(label, seed)] = (run_dir, load_config(spec.recipe, overrides=args))
    records = []
    for (label, seed), (run_dir, cfg) in configs.items():
        result_path = record_path(spec, label, seed, results_dir)
        if result_path.is_file():
            records.append(RunRecord.from_dict(json.loads(result_path.read_text())))
            continue
        owner = _claim(run_dir)
        if owner is not None:
            # Another live process (e.g. a second shell started with the same --seeds) is
            # training this run: leave it to that process.
            log(f"[study {spec.name}] {label} seed {seed}: being run by process {owner}; "
                "skipped")
            continue
        log(f"[study {spec.name}] {label} seed {seed} -> {run_dir}")
        start = time.perf_counter()
        status = "completed"
        try:
            metrics = train_fn(cfg)
        except NonFiniteLossError as e:
            # A diverged run is a result of the study (same recipe for every variant), not
            # a crash of it: record it and go on.
            log(f"[study {spec.name}] {label} seed {seed} diverged: {e}")
            status, metrics = "diverged", {"val_top1": math.nan, "val_top5": math.nan}
        except BaseException:
            _release(run_dir)
            raise
        wall = time.perf_counter() - start
        params, madds, form = _profile(cfg)
        times = _epoch_times(run_dir)
        record = RunRecord(
            study=spec.name, variant=label, seed=seed,
            top1=float(metrics["val_top1"]), top5=float(metrics.get("val_top5", math.nan)),
            test_samples=_test_samples(cfg), params=params, madds=madds,
            madds_form=form, epochs=int(cfg.train.epochs),
            epoch_time_s=sum(times) / len(times) if times else wall / max(cfg.train.epochs, 1),
            wall_s=wall, output_dir=str(run_dir), status=status,
        )
        result_path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(result_path, record.__dict__)
        _release(run_dir)
        log(f"[study {spec.name}] {label} seed {seed}: {status}, top-1 {record.top1:.2f}%")
        records.append(record)
    return records


_LOCK_NAME = ".study.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _claim(run_dir: Path) -> int | None:
    """Take the run (a lock file with this process's pid in its run directory); return
    ``None`` when taken, else the pid of the live process that holds it. A lock left by a
    process that is gone (killed, crashed) is taken over."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / _LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                return pid
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return None
    return None  # lost a race twice to stale locks: run anyway


def _release(run_dir: Path) -> None:
    (run_dir / _LOCK_NAME).unlink(missing_ok=True)


def record_path(spec: StudySpec, variant: str, seed: int,
                results_dir: str | os.PathLike = "results") -> Path:
    """Where the record of one finished run is kept."""
    return Path(results_dir) / spec.name / f"{variant}_seed{seed}.json"


def collect_records(spec: StudySpec, results_dir: str | os.PathLike = "results"
                    ) -> list[RunRecord]:
    """Every finished run of ``spec`` (its records under ``results_dir``)."""
    out = []
    for label in spec.variants:
        for seed in spec.seeds:
            p = record_path(spec, label, seed, results_dir)
            if p.is_file():
                out.append(RunRecord.from_dict(json.loads(p.read_text())))
    return out
