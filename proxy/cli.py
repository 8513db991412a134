"""The ``shadow-proxy`` command (SPEC §3). Every user error ends in one clear line, exit 2.

Subcommands import their modules lazily, so ``check`` or ``audit verify`` never pay for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from proxy import __version__

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line, not a usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"shadow-proxy: {message}", file=sys.stderr)
    return code


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- commands ---------------------------------------------------------------------------------


def _load(path: str) -> Any:
    """The loaded config, or None after printing one line per problem to stderr."""
    from proxy.loading import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    loaded = _load(args.config)
    if loaded is None:
        return EXIT_USAGE
    config = loaded.config
    policies = sorted({str(p) for p in loaded.policy_files.values()})
    print(
        f"{args.config}: ok ({len(config.routes)} route{'s' if len(config.routes) != 1 else ''}"
        + (f"; policies: {', '.join(policies)}" if policies else "")
        + ")"
    )
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from proxy.log import configure_logging
    from proxy.server import serve

    loaded = _load(args.config)
    if loaded is None:
        return EXIT_USAGE
    configure_logging(loaded.config.log.level, loaded.config.log.format)
    if args.workers > 1:
        from proxy.workers import run_workers, shared_store_problem

        problem = shared_store_problem(loaded, args.workers)
        if problem:
            return _fail(problem)
        return run_workers(loaded, args.workers)
    _use_uvloop()
    try:
        asyncio.run(serve(loaded))
    except OSError as exc:
        return _fail(f"cannot start: {exc.strerror or exc}", EXIT_FAIL)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from proxy.verify import print_result, verify

    try:
        result = verify(args.paths)
    except FileNotFoundError as exc:
        return _fail(str(exc))
    print_result(result, sys.stdout)
    return EXIT_OK if result.ok else EXIT_FAIL


def cmd_audit_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from proxy.export import ExportError, export

    try:
        result = export(args.url, Path(args.output))
    except ExportError as exc:
        return _fail(str(exc))
    print(result.summary(Path(args.output)))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo import run_demo

    _use_uvloop()
    return run_demo(args)


def cmd_stubs(args: argparse.Namespace) -> int:
    from proxy import stubs

    return stubs.run(args)


def cmd_stage(args: argparse.Namespace) -> int:
    from proxy import admin_client

    return admin_client.run(args)


def cmd_report(args: argparse.Namespace) -> int:
    from proxy import report

    return report.run(args)


# --- parser -----------------------------------------------------------------------------------


def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_, description=help_)
    parser.set_defaults(func=func)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shadow-proxy", description="Put a model into production safely.")
    parser.add_argument("--version", action="version", version=f"shadow-proxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = _add(sub, "run", cmd_run, "serve traffic and the admin API until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", required=True, help="config file (YAML)")
    run.add_argument("--workers", type=int, default=1, help="processes serving one port (needs a redis:// store)")

    check = _add(sub, "check", cmd_check, "validate a config and every policy it names")
    check.add_argument("-c", "--config", required=True, help="config file (YAML)")

    demo = _add(sub, "demo", cmd_demo, "run stubs, the proxy and synthetic traffic; print the report")
    demo.add_argument(
        "--seconds", type=float, default=None, help="stop after this long (default: when the ladder is done)"
    )
    demo.add_argument("--audit-dir", default=None, help="keep the audit trail here (default: a temp folder)")
    demo.add_argument("--seed", type=int, default=7, help="seed of the synthetic traffic")

    audit = _add(sub, "audit", lambda a: _fail("audit needs a subcommand: verify or export"), "audit trail tools")
    audit_sub = audit.add_subparsers(dest="audit_command", metavar="SUBCOMMAND", parser_class=_Parser)
    verify = _add(audit_sub, "verify", cmd_audit_verify, "check each writer's hash chain and seals")
    verify.add_argument("paths", nargs="+", metavar="AUDIT", help="audit files or folders")
    export = _add(audit_sub, "export", cmd_audit_export, "write a Redis audit stream to JSON Lines, a file per writer")
    export.add_argument("url", metavar="URL", help="redis://host:port/DB/STREAM")
    export.add_argument("-o", "--output", required=True, metavar="DIR", help="folder for the files (made if missing)")

    report = _add(sub, "report", cmd_report, "agreement report for analysts")
    try:
        from proxy import report as report_module

        report_module.add_arguments(report)
    except (ImportError, AttributeError):  # pragma: no cover - report is being written
        report.add_argument("paths", nargs="*")

    stage = _add(sub, "stage", cmd_stage, "operate a running proxy's stages through its admin API")
    from proxy import admin_client

    admin_client.add_arguments(stage)

    stubs = _add(sub, "stubs", cmd_stubs, "run the demo legacy and model upstreams")
    from proxy import stubs as stubs_module

    stubs_module.add_arguments(stubs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`... | head`): no traceback, and nothing more to flush at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
