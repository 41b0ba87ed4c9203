"""Command line for the store.

    python -m data import PAIRS.jsonl --db DB [--skip-bad]
    python -m data export --db DB --format csv|parquet|jsonl|arena --out PATH [--source judgment|benchmark]
    python -m data stats --db DB [--source judgment|benchmark|all] [--categories] [--json]
    python -m data agreement --db DB [--session S] [--json]
    python -m data check --db DB

``--db`` defaults to $ROUTELENS_DB, else $ROUTELENS_DATA_DIR/routelens.sqlite, else var/routelens.sqlite.

Exit status: 0 done; 1 an error, or bad import lines and nothing imported; 2 bad command line;
3 bad import lines reported and the good lines imported (``--skip-bad``). Expected errors print one
line (``error: ...``), never a traceback; an import prints one line per bad line first.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data.pairs import PairsError
from data.store import Store, StoreError, default_db_path

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_PARTIAL = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data",
                                     description="RouteLens store: import, export, stats, agreement.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    db_help = f"database file (default: $ROUTELENS_DB, else $ROUTELENS_DATA_DIR/routelens.sqlite, else {default_db_path({})})"

    p = sub.add_parser("import", help="import performance pairs JSONL")
    p.add_argument("pairs", type=Path, metavar="PAIRS.jsonl")
    p.add_argument("--db", type=Path, default=None, help=db_help)
    p.add_argument("--skip-bad", action="store_true",
                   help="import the good lines when some are bad (default: import nothing)")

    p = sub.add_parser("export", help="export pairs and judgments")
    p.add_argument("--db", type=Path, default=None, help=db_help)
    p.add_argument("--format", required=True, choices=("csv", "parquet", "jsonl", "arena"))
    p.add_argument("--out", required=True, type=Path,
                   help="jsonl: the pairs file (judgments go to <stem>.judgments.jsonl); csv/parquet: a folder; "
                        "arena: the votes file (one battle per line, FastChat's fields)")
    p.add_argument("--source", choices=("judgment", "benchmark"), default=None,
                   help="export only pairs of this source (default: all)")

    p = sub.add_parser("stats", help="counts and per-backend accuracy")
    p.add_argument("--db", type=Path, default=None, help=db_help)
    p.add_argument("--source", choices=("judgment", "benchmark", "all"), default=None,
                   help="which pairs to score (default: judgments, and imported benchmark pairs separately)")
    p.add_argument("--categories", action="store_true", help="also print accuracy per category")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")

    p = sub.add_parser("agreement", help="Krippendorff's alpha between annotators, and their disagreements")
    p.add_argument("--db", type=Path, default=None, help=db_help)
    p.add_argument("--session", default=None, help="only the judgments of this annotation session")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("check", help="run PRAGMA integrity_check")
    p.add_argument("--db", type=Path, default=None, help=db_help)
    return parser


def _table(headers: Sequence[str], rows: list[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def _print_stats(store: Store, stats: dict[str, Any], title: str, categories: bool) -> None:
    print()
    print(title)
    if not stats["backends"]:
        print("  (none)")
        return
    with_best = stats["source"] in ("judgment", "all")  # only judgments choose a best answer
    print(_table(
        ["backend", "n", "correct", "accuracy"] + (["best"] if with_best else []),
        [[b, e["n"], e["correct"], e["accuracy"]] + ([e["best"]] if with_best else [])
         for b, e in stats["backends"].items()],
    ))
    if any(stats["best_other"].values()):
        print("best = tie: {tie}, all wrong: {all_wrong}".format(**stats["best_other"]))
    if categories:
        backends = list(stats["backends"])
        rows = []
        for category, per_backend in stats["categories"].items():
            rows.append([category] + [
                f"{per_backend[b]['accuracy']:.3f} ({per_backend[b]['n']})" if b in per_backend else "-"
                for b in backends
            ])
        print()
        print(_table(["category"] + backends, rows))


def _cmd_stats(store: Store, args: argparse.Namespace) -> int:
    sources = [None if args.source == "all" else args.source] if args.source else ["judgment", "benchmark"]
    results = {source or "all": store.stats(source=source) for source in sources}
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
        return EXIT_OK
    counts = store.counts()
    print(f"database: {store.path} (schema version {store.schema_version()})")
    print("  ".join(f"{name.replace('_', ' ')}: {n}" for name, n in counts.items()))
    titles = {"judgment": "accuracy from judgments (each judged query and backend once, verdicts averaged)",
              "benchmark": "accuracy from imported benchmark pairs",
              "all": "accuracy from all performance pairs"}
    for key, stats in results.items():
        _print_stats(store, stats, titles[key], args.categories)
    return EXIT_OK


def _cmd_import(store: Store, args: argparse.Namespace) -> int:
    report = store.import_pairs(args.pairs, skip_bad=args.skip_bad)
    for line, message in report.errors:
        print(f"{args.pairs}:{line}: {message}", file=sys.stderr)
    if report.errors and not args.skip_bad:
        lines = ", ".join(str(n) for n, _ in report.errors[:20]) + (" ..." if len(report.errors) > 20 else "")
        print(f"error: {len(report.errors)} bad line(s) in {args.pairs} (lines {lines}); nothing was imported "
              "(fix them, or pass --skip-bad to import the good lines)", file=sys.stderr)
        return EXIT_ERROR
    print(f"imported {report.imported} pair(s), skipped {report.skipped} already present"
          + (f", left out {len(report.errors)} bad line(s)" if report.errors else ""))
    return EXIT_PARTIAL if report.errors else EXIT_OK


def _cmd_export(store: Store, args: argparse.Namespace) -> int:
    from data.export import export  # pandas/pyarrow only for this command

    written = export(store, args.format, args.out, source=args.source)
    for name, (path, count) in written.items():
        print(f"{name}: {count} row(s) -> {path}")
    return EXIT_OK


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _cmd_agreement(store: Store, args: argparse.Namespace) -> int:
    from data.agreement import report  # the krippendorff package only for this command

    result = report(store, session_id=args.session)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
        return EXIT_OK
    scope = f"session {args.session}" if args.session else "all judgments"
    print(f"agreement over {scope}: {result['items']} item(s) judged by two or more annotators, "
          f"{result['units']} (item, backend) unit(s), {result['annotators_total']} annotator(s)")
    print(f"Krippendorff's alpha ({result['level']}): {_number(result['krippendorff_alpha'])}  "
          f"observed agreement: {_number(result['observed_agreement'])}")
    for title, groups in (("backend", result["per_backend"]), ("category", result["per_category"])):
        if groups:
            print()
            print(_table([title, "items", "alpha", "observed"], [
                [name, g["items"], _number(g["krippendorff_alpha"]), _number(g["observed_agreement"])]
                for name, g in groups.items()
            ]))
    if result["annotators"]:
        print()
        print(_table(["annotator", "units", "compared", "agree with majority"], [
            [name, a["units"], a["compared"], _number(a["agreement_with_majority"])]
            for name, a in result["annotators"].items()
        ]))
    split = result["disagreements"]
    print()
    print(f"{len(split)} item(s) where annotators split, {sum(d['adjudicated'] for d in split)} with a final verdict")
    return EXIT_OK


def _cmd_check(store: Store, args: argparse.Namespace) -> int:
    result = store.integrity_check()
    if result == ["ok"]:
        print(f"{store.path}: ok (schema version {store.schema_version()})")
        return EXIT_OK
    for line in result:
        print(line, file=sys.stderr)
    print(f"error: {store.path} failed the integrity check", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    db_path = args.db if args.db is not None else default_db_path()
    commands = {"import": _cmd_import, "export": _cmd_export, "stats": _cmd_stats, "agreement": _cmd_agreement,
                "check": _cmd_check}
    try:
        if args.command == "import" and not args.pairs.is_file():
            raise FileNotFoundError(f"no pairs file at {args.pairs}")
        with Store.open(db_path, create=args.command == "import") as store:
            return commands[args.command](store, args)
    except BrokenPipeError:  # output piped into head, say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (StoreError, PairsError, ValueError, OSError, sqlite3.Error) as error:
        message = str(error) if not isinstance(error, OSError) or not error.strerror else (
            f"{error.strerror}: {error.filename}" if error.filename else error.strerror)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
