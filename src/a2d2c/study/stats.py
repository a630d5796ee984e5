"""The statistics of a paired-seed comparison (``shared/STUDIES.md``).

Only the standard library: a study summary must not need SciPy. The two-sided p-value
of a paired t-test uses Student's t distribution through the regularised incomplete
beta function, ``P(|T| ≥ t) = I_{ν/(ν+t²)}(ν/2, 1/2)``, evaluated by its continued
fraction (Lentz's method).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Paired", "binomial_se", "mean_std", "paired_difference", "student_t_two_sided_p"]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for a single value)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_std needs at least one value")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def binomial_se(accuracy_percent: float, n: int) -> float:
    """Sampling error of one accuracy on ``n`` test images, in percentage points."""
    p = accuracy_percent / 100.0
    return 100.0 * math.sqrt(max(p * (1.0 - p), 0.0) / n)


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1.0) * (a + m2)),
                    -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def student_t_two_sided_p(t: float, dof: int) -> float:
    """``P(|T| ≥ |t|)`` for Student's t with ``dof`` degrees of freedom."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    if math.isinf(t):
        return 0.0
    return _betainc(dof / 2.0, 0.5, dof / (dof + t * t))


@dataclass(frozen=True)
class Paired:
    """Per-seed differences ``variant - baseline`` and their paired t-test."""

    n: int
    mean: float
    std: float
    p_value: float | None  # None with fewer than two pairs, or no spread

    def fmt(self) -> str:
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        return f"{self.mean:+.2f} ± {self.std:.2f} (p = {p})"


def paired_difference(variant: Sequence[float], baseline: Sequence[float]) -> Paired:
    """Paired difference of two equally long, seed-aligned sequences."""
    if len(variant) != len(baseline) or not variant:
        raise ValueError("paired_difference needs two non-empty sequences of the same length, "
                         f"got {len(variant)} and {len(baseline)}")
    diffs = [v - b for v, b in zip(variant, baseline, strict=True)]
    mean, std = mean_std(diffs)
    n = len(diffs)
    if n < 2:
        return Paired(n, mean, std, None)
    if std == 0.0:
        return Paired(n, mean, std, 1.0 if mean == 0.0 else 0.0)
    t = mean / (std / math.sqrt(n))
    return Paired(n, mean, std, student_t_two_sided_p(t, n - 1))
