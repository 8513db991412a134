"""``shadow-proxy stage show|set|approve|hold|release``: operate a running proxy via its admin API.

The token comes from ``SHADOW_PROXY_ADMIN_TOKEN``; the API's address from ``--admin`` or
``SHADOW_PROXY_ADMIN_URL`` (default ``http://127.0.0.1:9901``). Every failure is one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from typing import Any

import orjson

DEFAULT_ADMIN = "http://127.0.0.1:9901"
TOKEN_ENV = "SHADOW_PROXY_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret


class ClientError(Exception):
    """One line for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["show", "set", "approve", "hold", "release"], help="what to do")
    parser.add_argument("stage", nargs="?", help="with set: shadow, assisted or autonomous")
    parser.add_argument("--route", help="route name (show: all routes when omitted)")
    parser.add_argument("--reason", default="", help="why (written into the audit trail)")
    parser.add_argument(
        "--admin", default=None, help=f"admin API URL (default ${{SHADOW_PROXY_ADMIN_URL}} or {DEFAULT_ADMIN})"
    )
    parser.add_argument("--json", action="store_true", help="print the API's JSON answer")


def call(base: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    if not base.startswith(("http://", "https://")):
        raise ClientError(f"the admin URL must start with http:// or https://, not {base!r}", 2)
    data = orjson.dumps(body) if body is not None else None
    request = urllib.request.Request(base.rstrip("/") + path, data=data, method=method)  # noqa: S310 - checked
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - scheme checked above
            return response.status, orjson.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            payload = orjson.loads(exc.read() or b"null")
        except orjson.JSONDecodeError:
            payload = None
        if exc.code == 412 and payload is not None:
            return exc.code, payload  # analysis: the gate does not pass (not an error)
        detail = payload.get("error") if isinstance(payload, dict) else exc.reason
        hint = f" (check {TOKEN_ENV})" if exc.code in (401, 403) else ""
        raise ClientError(f"{method} {path}: {exc.code} {detail}{hint}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason
        raise ClientError(f"cannot reach the admin API at {base}: {reason}") from None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def describe(route: dict[str, Any], analysis: dict[str, Any] | None) -> list[str]:
    w = route["window"]
    pending = f"  pending approval: {route['pending']}" if route["pending"] else ""
    lines = [
        f"{route['name']}: {route['stage']}{' (on hold)' if route['hold'] else ''}{pending}",
        f"  in stage for {w['dwell_s']:.0f}s; window {w['window_s']:g}s: {w.get('samples', 0)} samples, "
        f"agreement {_pct(w.get('agreement'))} [{_pct(w.get('agreement_lower'))} to {_pct(w.get('agreement_upper'))}], "
        f"error rate {_pct(w.get('error_rate'))}, p99 {w.get('p99_ms') if w.get('p99_ms') is not None else '-'} ms",
    ]
    if analysis is not None:
        gate = analysis.get("gate") or "rollback rules"
        lines.append(f"  {gate}: {'passes' if analysis['pass'] else 'does not pass'}")
        for check in analysis["checks"]:
            mark = "ok  " if check["pass"] else "FAIL"
            lines.append(f"    {mark} {check['name']}: {check['value']} (threshold {check['threshold']})")
    return lines


def _show(base: str, token: str, route: str | None, as_json: bool) -> None:
    if route is None:
        _, data = call(base, token, "GET", "/v1/routes")
        routes = data["routes"]
    else:
        _, one = call(base, token, "GET", f"/v1/routes/{route}")
        routes = [one]
    out: list[Any] = []
    for item in routes:
        analysis = None
        if item.get("policy"):
            _, analysis = call(base, token, "GET", f"/v1/routes/{item['name']}/analysis")
        out.append({**item, "analysis": analysis})
        if not as_json:
            print("\n".join(describe(item, analysis)))
    if as_json:
        print(orjson.dumps(out if route is None else out[0], option=orjson.OPT_INDENT_2).decode())


def run(args: argparse.Namespace) -> int:
    try:
        token = os.environ.get(TOKEN_ENV)
        if not token:
            raise ClientError(f"set {TOKEN_ENV} to the proxy's admin token", 2)
        base = args.admin or os.environ.get("SHADOW_PROXY_ADMIN_URL") or DEFAULT_ADMIN
        if args.action == "show":
            _show(base, token, args.route, args.json)
            return 0
        if not args.route:
            raise ClientError(f"stage {args.action} needs --route NAME", 2)
        body: dict[str, Any] = {"reason": args.reason}
        if args.action == "set":
            if not args.stage:
                raise ClientError("stage set needs a stage: shadow, assisted or autonomous", 2)
            body["stage"] = args.stage
        _, answer = call(
            base, token, "POST", f"/v1/routes/{args.route}/{'stage' if args.action == 'set' else args.action}", body
        )
        if args.json:
            print(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
        else:
            state = "changed" if answer.get("changed") else "unchanged"
            hold = ", on hold" if answer.get("hold") else ""
            print(f"{args.route}: {answer['stage']}{hold} ({state}, version {answer['version']})")
        return 0
    except ClientError as exc:
        print(f"shadow-proxy: {exc}", file=sys.stderr)
        return exc.code
