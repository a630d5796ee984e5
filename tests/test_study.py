"""Studies: paired statistics against closed forms, a resumable grid, the report."""

from __future__ import annotations

import math
import textwrap

import pytest

from a2d2c.study import (
    StudyError,
    collect_records,
    load_study,
    mean_std,
    paired_difference,
    run_study,
    student_t_two_sided_p,
    write_report,
)
from a2d2c.study.runner import list_studies, overrides_to_args


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.7])
def test_student_t_matches_closed_forms(t):
    # dof 1 is the Cauchy distribution, dof 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    assert student_t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert student_t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    # Large dof tends to the normal: P(|Z| >= t) = erfc(t / sqrt 2).
    assert student_t_two_sided_p(t, 100000) == pytest.approx(math.erfc(t / math.sqrt(2)),
                                                             abs=1e-4)


def test_critical_values_of_the_t_table():
    # Two-sided 5% critical values from any t table.
    for dof, crit in [(2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)]:
        assert student_t_two_sided_p(crit, dof) == pytest.approx(0.05, abs=2e-4)


def test_paired_difference_and_mean_std():
    assert mean_std([1.0, 2.0, 3.0, 4.0]) == pytest.approx((2.5, math.sqrt(5 / 3)))
    d = paired_difference([90.0, 91.0, 92.5], [89.0, 90.5, 91.0])
    diffs = [1.0, 0.5, 1.5]
    mean, sd = mean_std(diffs)
    t = mean / (sd / math.sqrt(3))
    assert (d.mean, d.std) == pytest.approx((mean, sd))
    assert d.p_value == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert paired_difference([1.0], [0.0]).p_value is None
    with pytest.raises(ValueError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])


def test_overrides_flatten_to_train_arguments():
    args = overrides_to_args({"model": {"name": "resnet18", "kwargs": {"conv_kwargs": {
        "num_points": 10}}}, "temperature": {"start": 1e6}})
    assert args == ["--model.name=resnet18", "--model.kwargs.conv_kwargs.num_points=10",
                    "--temperature.start=1000000.0"]


def test_the_shipped_studies_load_and_validate():
    from a2d2c.engine import load_config

    names = list_studies()
    assert {"main", "main_long", "sampling", "num_points", "num_kernels", "head",
            "placement"} <= set(names)
    for name in names:
        spec = load_study(name)
        assert len(spec.seeds) >= 3
        for label, ov in spec.variants.items():
            cfg = load_config(spec.recipe, overrides=[*overrides_to_args(spec.common),
                                                      *overrides_to_args(ov)])
            assert cfg.train.epochs >= 1, label
    # main_long: study 1's variants at 3x the images and 2x the epochs
    long, main = load_study("main_long"), load_study("main")
    assert long.variants == main.variants and long.baseline == main.baseline
    assert long.recipe == main.recipe and long.title != main.title
    cfg = load_config(long.recipe, overrides=overrides_to_args(long.common))
    assert (cfg.data.train_samples, cfg.train.epochs) == (30000, 8)


def test_a_study_extends_another(tmp_path):
    parent = _write_study(tmp_path)
    (tmp_path / "child.yaml").write_text(textwrap.dedent("""
        title: longer
        extends: tiny
        seeds: [0, 1, 2]
        common: {train: {epochs: 3}}
        """))
    child, base = load_study(tmp_path / "child.yaml"), load_study(parent)
    assert child.title == "longer" and child.seeds == [0, 1, 2]
    assert child.variants == base.variants and child.baseline == "static"
    assert child.recipe == base.recipe and child.common == {"train": {"epochs": 3}}
    (tmp_path / "loop.yaml").write_text("extends: loop\n")
    with pytest.raises(StudyError, match="cannot extend itself"):
        load_study(tmp_path / "loop.yaml")


RECIPE = """
model: {name: resnet18, kwargs: {stem: cifar, width_mult: 0.0625}}
data: {name: synthetic, num_classes: 3, in_chans: 1, img_size: 12, train_samples: 24,
       val_samples: 12, batch_size: 12, augment: false}
optim: {name: sgd, lr: 0.05}
schedule: {name: constant}
temperature: {start: 2.0, end: 1.0, anneal_epochs: 1}
train: {epochs: 1, device: cpu, progress: false, output_dir: unused}
"""


def _write_study(tmp_path, variants="", baseline="static"):
    (tmp_path / "recipe.yaml").write_text(RECIPE)
    text = textwrap.dedent(f"""
        title: tiny
        recipe: recipe.yaml
        seeds: [0, 1]
        baseline: {baseline}
        variants:
          static: {{model: {{name: resnet18}}}}
          a2d2c:
            model: {{name: resnet18_a2d2c_plus, kwargs: {{conv_kwargs: {{num_points: 5}}}}}}
        {variants}""")
    path = tmp_path / "tiny.yaml"
    path.write_text(text)
    return path


def test_study_runs_resumes_and_reports(tmp_path):
    spec = load_study(_write_study(tmp_path))
    runs, results = tmp_path / "runs", tmp_path / "results"
    trained = []

    def train(cfg):
        from a2d2c.engine import fit

        trained.append((cfg.model.name, cfg.train.seed))
        return fit(cfg).final_metrics

    records = run_study(spec, runs_root=runs, results_dir=results, train_fn=train,
                        seeds=[0], log=lambda s: None)
    assert [(r.variant, r.seed) for r in records] == [("static", 0), ("a2d2c", 0)]
    assert trained == [("resnet18", 0), ("resnet18_a2d2c_plus", 0)]
    assert records[1].params > records[0].params > 0 and records[0].madds > 0
    assert "A2D2Conv2d" in records[1].madds_form
    # Finished runs are not redone; only the missing seed trains.
    run_study(spec, runs_root=runs, results_dir=results, train_fn=train, log=lambda s: None)
    assert trained[2:] == [("resnet18", 1), ("resnet18_a2d2c_plus", 1)]
    records = collect_records(spec, results)
    assert len(records) == 4 and all(0 <= r.top1 <= 100 for r in records)
    md, png = write_report(spec, records, results, command="a2d2c study tiny")
    text = md.read_text()
    assert "| `a2d2c` |" in text and "(p = " in text and "Noise floor" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_study_errors(tmp_path):
    with pytest.raises(StudyError, match="known studies"):
        load_study("no_such_study")
    with pytest.raises(StudyError, match="baseline 'nope' is not one of the variants"):
        load_study(_write_study(tmp_path, baseline="nope"))
    spec = load_study(_write_study(tmp_path))
    with pytest.raises(StudyError, match="unknown variant"):
        run_study(spec, runs_root=tmp_path, only=["typo"])


def test_a_diverged_run_is_recorded_not_retried(tmp_path):
    from a2d2c.engine import NonFiniteLossError, fit

    spec = load_study(_write_study(tmp_path))
    calls = []

    def train(cfg):
        calls.append(cfg.model.name)
        if cfg.model.name == "resnet18_a2d2c_plus":
            raise NonFiniteLossError("non-finite training loss (nan) at epoch 1, step 1")
        return fit(cfg).final_metrics

    kwargs = dict(runs_root=tmp_path / "runs", results_dir=tmp_path / "results",
                  train_fn=train, seeds=[0], log=lambda s: None)
    records = run_study(spec, **kwargs)
    assert [r.status for r in records] == ["completed", "diverged"]
    run_study(spec, **kwargs)
    assert calls == ["resnet18", "resnet18_a2d2c_plus"]  # nothing retried
    md, _ = write_report(spec, records, tmp_path / "results")
    assert "diverged (seeds [0])" in md.read_text()


def test_a_run_held_by_a_live_process_is_skipped_and_a_stale_lock_taken_over(tmp_path):
    import os
    import subprocess
    import sys

    spec = load_study(_write_study(tmp_path))
    calls = []

    def fake_train(cfg):
        calls.append(cfg.train.output_dir)
        return {"val_top1": 50.0, "val_top5": 90.0}

    held = tmp_path / "runs" / "tiny" / "static" / "seed0"
    held.mkdir(parents=True)
    (held / ".study.lock").write_text(str(os.getppid()))  # a live process (our parent)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / "runs" / "tiny" / "a2d2c" / "seed0"
    stale.mkdir(parents=True)
    (stale / ".study.lock").write_text(dead)
    logs = []
    records = run_study(spec, runs_root=tmp_path / "runs", results_dir=tmp_path / "res",
                        seeds=[0], train_fn=fake_train, log=logs.append)
    assert [(r.variant, r.seed) for r in records] == [("a2d2c", 0)]
    assert any("being run by process" in line for line in logs)
    assert len(calls) == 1 and not (stale / ".study.lock").exists()
    assert (held / ".study.lock").exists()  # the live holder's lock is left alone
