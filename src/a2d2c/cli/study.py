"""``a2d2c study NAME``: run a named study (resumable) and write its table and plot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

#: `--section.key value` options become overrides of every run (as in `a2d2c train`)
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a shipped study (see --list) or a study "
                        "YAML file")
    parser.add_argument("--list", action="store_true", help="list the known studies")
    parser.add_argument("--only", nargs="+", metavar="VARIANT", help="run only these variants")
    parser.add_argument("--seeds", nargs="+", type=int, help="run only these seeds")
    parser.add_argument("--runs", default="runs/studies", help="where the runs go")
    parser.add_argument("--results", default="results",
                        help="where the table, the plot and the per-run records go")
    parser.add_argument("--report-only", action="store_true",
                        help="do not train: write the report from the finished runs")
    parser.add_argument("--note", default="",
                        help="a sentence printed under the table (machine, load, caveats)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help=argparse.SUPPRESS)  # deprecated spelling of --section.key value
    parser.epilog = ("Any config key can be overridden for every run as --section.key value, "
                     "e.g. --train.device cuda --data.workers 4.")


def main(args: argparse.Namespace) -> int:
    from ..study import collect_records, list_studies, load_study, run_study, write_report

    if args.list or not args.name:
        names = list_studies()
        if not names:  # a broken install, never a silent success
            from ..resources import studies_root

            print(f"a2d2c study: error: no study files found in {studies_root()} "
                  f"(reinstall a2d2c)", file=sys.stderr)
            return 2
        for name in names:
            spec = load_study(name)
            print(f"{name:20s} {spec.title} ({len(spec.variants)} variants x "
                  f"{len(spec.seeds)} seeds)")
        if not args.list:
            print("a2d2c study: error: name a study (one of the above) or use --list",
                  file=sys.stderr)
        return 0 if args.list else 2
    spec = load_study(args.name)
    from ..engine.config import parse_overrides
    from ..study.runner import overrides_to_args

    # one override syntax: --section.key value (the old --set key=value still works)
    tokens = [*getattr(args, "overrides", []), *(f"--{kv}" for kv in args.set)]
    extra = overrides_to_args(parse_overrides(tokens))
    if not args.report_only:
        run_study(spec, runs_root=args.runs, results_dir=args.results, only=args.only,
                  seeds=args.seeds, extra=extra)
    records = collect_records(spec, args.results)
    # The command that (re)produces the study: report options are not part of it.
    command = f"a2d2c study {args.name}" + "".join(f" {a}" for a in extra)
    if Path(args.results) != Path("results"):  # where the records are is part of it
        command += f" --results {args.results}"
    md, png = write_report(spec, records, args.results, command, args.note)
    print(f"wrote {md} and {png} ({len(records)} runs)")
    return 0
