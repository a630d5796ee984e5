"""Named studies: grids of variants × seeds, reported as paired comparisons.

``a2d2c study <name>`` runs the shipped study ``<name>`` (resumable) and writes
``results/<name>.md`` and ``results/<name>.png``; see :mod:`a2d2c.study.runner`.
"""

from .report import plot_study, summarize_study, write_report
from .runner import (
    RunRecord,
    StudyError,
    StudySpec,
    collect_records,
    list_studies,
    load_study,
    run_study,
)
from .stats import binomial_se, mean_std, paired_difference, student_t_two_sided_p

__all__ = [
    "RunRecord",
    "StudyError",
    "StudySpec",
    "binomial_se",
    "collect_records",
    "list_studies",
    "load_study",
    "mean_std",
    "paired_difference",
    "plot_study",
    "run_study",
    "student_t_two_sided_p",
    "summarize_study",
    "write_report",
]
