"""``shadow-proxy report``: the analyst's agreement report over audit trails (SPEC §7, docs/report.md).

The CLI calls :func:`add_arguments` and :func:`run`. Library use: :func:`build_report` returns the
report as a JSON-shaped dict (its shape is documented in docs/report.md).

Layout: :mod:`.read` (files, lines, de-duplication) → :mod:`.aggregate` / :mod:`.groups` (pure
folding) → :mod:`.summary` (the dict) → :mod:`.render_table`, :mod:`.render_flat`,
:mod:`.render_html`. Two passes over the files: the first collects only outcome records, so an
outcome joins its decision wherever it appears without keeping every decision in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import orjson

from proxy.report.aggregate import Aggregator, Scope, collect_outcomes
from proxy.report.groups import BadRecord, Judge, label
from proxy.report.read import ReportError, Seen, Where, audit_files, lines_containing, records
from proxy.report.summary import summarize
from proxy.report.times import parse_bound

__all__ = ["ReportError", "add_arguments", "build_report", "judges_from_config", "run"]

FORMATS = ("table", "json", "csv", "html", "parquet")
SHOWN_PROBLEMS = 20


def build_report(
    paths: Iterable[str | Path],
    scope: Scope | None = None,
    *,
    judges: Mapping[str, Judge] | None = None,
    on_bad: Callable[[Where, str], None] | None = None,
    top_labels: int = 8,
) -> dict[str, Any]:
    """Read the audit files under ``paths`` and return the report dict.

    Malformed lines and unusable records go to ``on_bad(where, reason)`` and are skipped; the report's
    ``inputs.malformed`` counts them. Raises :class:`ReportError` for missing paths.
    """
    files = audit_files(paths)
    malformed = 0

    def bad(where: Where, reason: str) -> None:
        nonlocal malformed
        malformed += 1
        if on_bad is not None:
            on_bad(where, reason)

    outcomes = collect_outcomes(_parsed(lines_containing(files, b'"outcome"')))
    agg = Aggregator(scope or Scope(), outcomes, judges)
    seen, duplicates = Seen(), 0
    for record, name, number in records(files, bad):
        if not seen.first_time(record):
            duplicates += 1
            continue
        try:
            agg.add(record)
        except BadRecord as exc:
            bad(Where(name, number), str(exc))
    agg.finish()
    inputs = {"files": len(files), "malformed": malformed, "duplicates": duplicates}
    return summarize(agg, inputs, top_labels=top_labels)


def _parsed(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        with contextlib.suppress(orjson.JSONDecodeError):
            record = orjson.loads(line)
            if type(record) is dict:
                yield record


def judges_from_config(config: Any) -> dict[str, Judge]:
    """Per route, judge outcomes with the route's ``decision.compare`` (``proxy.decisions``).

    The model's decision is compared with the outcome as with the primary's (so ``map`` and
    ``numeric`` apply); the primary's decision is compared with the outcome by the same rule, except
    that ``map`` (which translates model labels) becomes ``exact``. With ``map``, model labels are
    translated in the confusion matrix too, so its diagonal is agreement.
    """
    from proxy.decisions import build_comparator

    judges = {}
    for route in config.routes:
        d = route.decision
        model_cmp = build_comparator(d)
        primary_cmp = build_comparator(d.model_copy(update={"compare": "exact"})) if d.compare == "map" else model_cmp
        mapping = {label(k): label(v) for k, v in (d.map or {}).items()} if d.compare == "map" else {}
        judges[route.name] = Judge(
            primary=lambda dec, truth, cmp=primary_cmp: cmp(dec, truth),
            model=lambda dec, truth, cmp=model_cmp: cmp(truth, dec),
            model_label=mapping,
        )
    return judges


# --- command line ---------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``report`` subcommand's arguments."""
    parser.add_argument("audit", nargs="+", metavar="AUDIT", help="audit files or folders (*.jsonl, *.jsonl.gz)")
    parser.add_argument("--by", choices=("segment", "model_version", "day"), help="group each route x stage by")
    parser.add_argument("--route", action="append", metavar="NAME", help="only this route (repeatable)")
    parser.add_argument("--since", metavar="T", help="records at or after T (RFC 3339 or a date)")
    parser.add_argument("--until", metavar="T", help="records before T (a date: up to the end of that day)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument("-o", "--output", metavar="FILE", help="write here instead of standard output")
    parser.add_argument("-c", "--config", metavar="CONFIG", help="compare decisions with outcomes as this config does")
    parser.add_argument("--top-labels", type=int, default=8, metavar="N", help="labels in the confusion matrix")


def run(args: argparse.Namespace) -> int:
    """Run ``shadow-proxy report``: 0 on success, 2 with one line on stderr for a user error."""
    try:
        return _run(args)
    except ReportError as exc:
        print(f"shadow-proxy report: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the interpreter's final flush cannot fail
        return 1


def _scope(args: argparse.Namespace) -> Scope:
    since = parse_bound(args.since, end=False) if args.since else None
    until = parse_bound(args.until, end=True) if args.until else None
    if since and until and since >= until:
        raise ReportError(f"--since {args.since} is not before --until {args.until}")
    return Scope(routes=frozenset(args.route or ()), since=since, until=until, by=args.by)


def _judges(path: str | None) -> dict[str, Judge]:
    if path is None:
        return {}
    from proxy.loading import ConfigError, load_config

    try:
        return judges_from_config(load_config(path).config)
    except ConfigError as exc:
        raise ReportError("; ".join(exc.problems)) from None


def _check_output(args: argparse.Namespace) -> None:
    if args.top_labels < 1:
        raise ReportError("--top-labels must be at least 1")
    if args.format == "parquet":
        from proxy.report.render_flat import require_pyarrow

        require_pyarrow()
        if not args.output:
            raise ReportError("--format parquet writes a file: add -o FILE")
    if args.format == "html" and not args.output and sys.stdout.isatty():
        raise ReportError("--format html writes a page: add -o FILE (or redirect standard output)")


def _run(args: argparse.Namespace) -> int:
    _check_output(args)
    scope, judges = _scope(args), _judges(args.config)
    problems = _ProblemPrinter(sys.stderr)
    report = build_report(args.audit, scope, judges=judges, on_bad=problems, top_labels=args.top_labels)
    problems.close()
    _write(report, args)
    return 0


class _ProblemPrinter:
    """Prints the first malformed lines as ``FILE:LINE: reason``, then how many more there were."""

    def __init__(self, out: IO[str]) -> None:
        self.out, self.count = out, 0

    def __call__(self, where: Where, reason: str) -> None:
        self.count += 1
        if self.count <= SHOWN_PROBLEMS:
            print(f"{where}: skipped: {reason}", file=self.out)

    def close(self) -> None:
        if self.count > SHOWN_PROBLEMS:
            print(f"... and {self.count - SHOWN_PROBLEMS:,} more malformed lines skipped", file=self.out)


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    from proxy.report import render_flat

    fmt, output = args.format, args.output
    try:
        if fmt == "parquet":
            render_flat.write_parquet(report, Path(output))
            return
        with _text_output(output) as out:
            if fmt == "table":
                from proxy.report import render_table

                render_table.render(report, out, color=output is None and out.isatty())
            elif fmt == "json":
                render_flat.write_json(report, out)
            elif fmt == "csv":
                render_flat.write_csv(report, out)
            else:
                from proxy.report import render_html

                out.write(render_html.render(report))
    except OSError as exc:
        raise ReportError(f"cannot write {output or 'standard output'}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def _text_output(output: str | None) -> Iterator[IO[str]]:
    if output is None:
        yield sys.stdout
        return
    with open(output, "w", encoding="utf-8", newline="") as out:
        yield out
