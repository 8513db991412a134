"""Configuration as a platform engineer meets it: ``shadow-proxy check``, one clear line per problem,
environment overrides, durations and rates, policies (SPEC §3, §4, §6)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.cli import main
from proxy.config import Budget
from proxy.loading import ConfigError, load_config, load_policy, shipped_policies, shipped_policy_dir
from proxy.units import format_duration, parse_duration, parse_rate

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"
DURATION_HINT = "(use 250ms, 30s, 10m, 1h)"

# The repo's examples/ are the spec's examples, verbatim; test_examples_match_the_spec keeps them in step.
EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"

MINIMAL_ROUTE: dict[str, Any] = {
    "name": "loan",
    "primary": {"url": "http://127.0.0.1:9001"},
    "model": {"url": "http://127.0.0.1:9002", "timeout": "300ms"},
    "decision": {"primary": "decision", "model": "decision"},
}
DELETE = object()


@pytest.fixture(autouse=True)
def _no_inherited_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's own SHADOW_PROXY_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("SHADOW_PROXY_"):
            monkeypatch.delenv(name)


def write_example(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "example-policy.yaml").write_text((EXAMPLES_DIR / "example-policy.yaml").read_text())
    path = folder / "config.yaml"
    path.write_text((EXAMPLES_DIR / "example-config.yaml").read_text())
    return path


def config_with(**changes: Any) -> dict[str, Any]:
    """The minimal valid config with ``dotted.path=value`` changes (``routes.0.model.timeout``)."""
    raw: dict[str, Any] = {"routes": [copy.deepcopy(MINIMAL_ROUTE)]}
    for dotted, value in changes.items():
        *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
        node: Any = raw
        for part in parents:
            node = node[part] if isinstance(part, int) else node.setdefault(part, {})
        if value is DELETE:
            del node[last]
        elif isinstance(last, int) and last == len(node):
            node.append(value)
        else:
            node[last] = value
    return raw


def run_check(path: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    """``shadow-proxy check -c PATH``: exit code, stderr lines, stdout. Never a traceback."""
    code = main(["check", "-c", str(path)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out
    return code, err.splitlines(), out


# --- the example config ---------------------------------------------------------------------------


def test_example_config_passes_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_example(tmp_path)
    code, errors, out = run_check(path, capsys)
    assert (code, errors) == (0, [])
    assert out.startswith(f"{path}: ok (1 route; policies: ")
    assert str(tmp_path / "example-policy.yaml") in out


def test_example_config_loads_with_the_values_in_the_file(tmp_path: Path) -> None:
    loaded = load_config(write_example(tmp_path), environ={})
    config = loaded.config
    assert (config.listen.host, config.listen.port) == ("0.0.0.0", 8080)
    assert (config.admin.host, config.admin.port) == ("127.0.0.1", 9901)
    assert config.admin.outcomes_token_env == "SHADOW_PROXY_OUTCOMES_TOKEN"
    assert (config.log.level, config.log.format, config.store.url) == ("info", "json", "memory://")
    assert config.audit.rotate_bytes == 67108864 and config.audit.include_bodies is False
    assert config.audit.redact == ["body.applicant.ssn", "headers.authorization"]
    assert config.max_body_bytes == 1048576
    assert config.default_upstream == "http://127.0.0.1:9001"
    route = config.routes[0]
    assert route.name == "loan-decision"
    assert (route.match.path_prefix, route.match.methods) == ("/v1/decide", ["POST"])
    assert route.primary.timeout == 2.0
    assert (route.model.timeout, route.model.version) == (0.3, "credit-v7")
    assert (route.decision.usage, route.decision.compare, route.segment) == (
        "usage.total_tokens",
        "exact",
        "body.region",
    )
    assert (route.stage, route.mirror.max_in_flight, route.assisted.max_wait_ms) == ("shadow", 512, 150)
    assert route.budget.rate is not None and route.budget.rate.per_second == 50.0
    assert str(route.budget.rate) == "50/s" and route.budget.burst_calls == 100
    assert route.budget.cost is not None
    assert (route.budget.cost.limit, route.budget.cost.window) == (2000.0, 86400.0)


def test_example_policy_is_resolved_and_parsed(tmp_path: Path) -> None:
    loaded = load_config(write_example(tmp_path), environ={})
    assert loaded.policy_files == {"loan-decision": tmp_path / "example-policy.yaml"}
    policy = loaded.policies["loan-decision"]
    assert policy.evaluate_every == 30.0
    gate = policy.promote.shadow_to_assisted
    assert gate is not None
    assert (gate.window, gate.min_samples, gate.min_dwell, gate.max_p99) == (86400.0, 2000, 86400.0, 0.12)
    assert gate.approval == "auto"
    assert policy.promote.assisted_to_autonomous is not None
    assert policy.promote.assisted_to_autonomous.approval == "manual"
    assert [(r.window, r.to, r.p99_above) for r in policy.rollback] == [
        (900.0, "previous", None),
        (300.0, "shadow", 0.28),
    ]


def test_relative_paths_resolve_against_the_config_folder_not_the_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_example(tmp_path / "deploy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = load_config("../deploy/config.yaml", environ={})
    folder = (tmp_path / "deploy").resolve()
    assert loaded.config.audit.sink == f"file://{folder / 'audit'}"
    assert loaded.config.audit.spill_dir == str(folder / "audit-spill")
    assert loaded.policy_files["loan-decision"].resolve() == folder / "example-policy.yaml"
    code, errors, _ = run_check("../deploy/config.yaml", capsys)
    assert (code, errors) == (0, [])


def test_absolute_audit_paths_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    raw = config_with(**{"audit.sink": "file:///var/lib/audit", "audit.spill_dir": "/var/spool/spill"})
    path.write_text(yaml.safe_dump(raw))
    audit = load_config(path, environ={}).config.audit
    assert (audit.sink, audit.spill_dir) == ("file:///var/lib/audit", "/var/spool/spill")


@pytest.mark.skipif(not SPEC_DIR.is_dir(), reason="the spec folder is not beside this clone")
def test_examples_match_the_spec() -> None:
    for name in ("example-config.yaml", "example-policy.yaml"):
        assert (SPEC_DIR / name).read_bytes() == (EXAMPLES_DIR / name).read_bytes()


# --- invalid configs: one line each, FILE: FIELD: what is wrong --------------------------------------


INVALID = {
    "bad duration": (
        {"routes.0.model.timeout": "3 seconds"},
        f"routes[0].model.timeout: '3 seconds' is not a duration {DURATION_HINT}",
    ),
    "bare number for a duration": (
        {"routes.0.model.timeout": 3},
        f"routes[0].model.timeout: 3 is not a duration: add a unit {DURATION_HINT}",
    ),
    "zero duration where time is needed": (
        {"routes.0.primary.timeout": "0s"},
        "routes[0].primary.timeout: must be more than 0s (got 0s)",
    ),
    "unknown key": (
        {"routes.0.model.timout": "3s"},
        "routes[0].model.timout: unknown key (did you mean 'timeout'?)",
    ),
    "unknown top-level key": ({"rutes": []}, "rutes: unknown key (did you mean 'routes'?)"),
    "missing required field": ({"routes.0.primary": DELETE}, "routes[0].primary: required but missing"),
    "empty section": ({"routes.0.model": None}, "routes[0].model: empty (expected a mapping of settings)"),
    "unknown stage": (
        {"routes.0.stage": "live"},
        "routes[0].stage: 'live' is not one of 'shadow', 'assisted' or 'autonomous'",
    ),
    "non-http url": (
        {"routes.0.model.url": "ftp://models.internal"},
        "routes[0].model.url: 'ftp://models.internal' is not an http:// or https:// URL",
    ),
    "url without scheme": (
        {"default_upstream": "legacy:9001"},
        "default_upstream: 'legacy:9001' is not an http:// or https:// URL",
    ),
    "url with a port out of range": (
        {"routes.0.primary.url": "http://legacy:90001"},
        "routes[0].primary.url: 'http://legacy:90001' is not a valid URL (port out of range 0-65535)",
    ),
    "bad rate": (
        {"routes.0.budget.rate": "50 per second"},
        "routes[0].budget.rate: '50 per second' is not a rate (use 200/s, 5000/m)",
    ),
    "sample above 1": (
        {"routes.0.mirror.sample": 1.5},
        "routes[0].mirror.sample: must be at most 1 (got 1.5)",
    ),
    "port out of range": ({"listen.port": 70000}, "listen.port: must be at most 65535 (got 70000)"),
    "words for a number": ({"max_body_bytes": "1MiB"}, "max_body_bytes: '1MiB' is not a whole number"),
    "words for a boolean": (
        {"audit.include_bodies": "maybe"},
        "audit.include_bodies: 'maybe' is not true or false",
    ),
    "number where text is needed": (
        {"routes.0.model.version": 7},
        "routes[0].model.version: 7 is a number, not text (put it in quotes)",
    ),
    "compare numeric without tolerance": (
        {"routes.0.decision.compare": "numeric"},
        "routes[0].decision.tolerance: required with compare: numeric (e.g. tolerance: 0.01)",
    ),
    "compare map without map": (
        {"routes.0.decision.compare": "map"},
        "routes[0].decision.map: required with compare: map (model label: primary label)",
    ),
    "invalid JMESPath": (
        {"routes.0.decision.model": "decision[["},
        "routes[0].decision.model: 'decision[[' is not a valid JMESPath expression (unexpected '[' at character 10)",
    ),
    "duplicate route names": (
        {"routes.1": MINIMAL_ROUTE},
        "routes[1].name: 'loan' is already the name of routes[0]",
    ),
    "bad route name": (
        {"routes.0.name": "loan decision"},
        "routes[0].name: 'loan decision' is not a route name "
        "(1 to 63 letters, digits, '_', '.' or '-', starting with a letter or digit)",
    ),
    "path prefix without slash": (
        {"routes.0.match.path_prefix": "v1/decide"},
        "routes[0].match.path_prefix: 'v1/decide' is not a path prefix (it starts with /, e.g. /v1/decide)",
    ),
    "methods as a string": (
        {"routes.0.match.methods": "POST"},
        "routes[0].match.methods: expected a list, not 'POST'",
    ),
    "bad redaction path": (
        {"audit.redact": ["request.ssn"]},
        "audit.redact[0]: 'request.ssn' is not a redaction path "
        "(body.a.b or headers.name; '*' matches any key or item)",
    ),
    "bad store url": (
        {"store.url": "postgres://db/0"},
        "store.url: 'postgres://db/0' is not a store URL (use memory:// or redis://host:6379/0)",
    ),
    "bad audit sink": (
        {"audit.sink": "s3://bucket/audit"},
        "audit.sink: 's3://bucket/audit' is not an audit sink (use file://DIR or redis://host:port/DB/STREAM)",
    ),
    "redis audit sink without a stream": (
        {"audit.sink": "redis://redis:6379/0"},
        "audit.sink: 'redis://redis:6379/0' is not a Redis audit sink (use redis://host:port/DB/STREAM)",
    ),
}


@pytest.mark.parametrize("changes, expected", INVALID.values(), ids=INVALID.keys())
def test_invalid_config_fails_check_with_one_line_naming_file_and_field(
    changes: dict[str, Any],
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(yaml.safe_dump(config_with(**changes)))
    code, errors, out = run_check("config.yaml", capsys)
    assert (code, errors, out) == (2, [f"config.yaml: {expected}"], "")


def test_several_problems_give_several_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = config_with(**{"store.url": "sqlite://", "routes.0.model.timeout": "soon", "routes.0.stage": "live"})
    Path("config.yaml").write_text(yaml.safe_dump(raw))
    code, errors, _ = run_check("config.yaml", capsys)
    assert code == 2
    assert sorted(errors) == [
        f"config.yaml: routes[0].model.timeout: 'soon' is not a duration {DURATION_HINT}",
        "config.yaml: routes[0].stage: 'live' is not one of 'shadow', 'assisted' or 'autonomous'",
        "config.yaml: store.url: 'sqlite://' is not a store URL (use memory:// or redis://host:6379/0)",
    ]


FILE_PROBLEMS = {
    "yaml syntax error": (
        "listen: {host: 0.0.0.0\nroutes: []\n",
        "line 2, column 7: expected ',' or '}', but got ':'",
    ),
    "duplicate yaml key": (
        "listen: {port: 8080}\nlog: {level: info}\nlisten: {port: 8081}\n",
        "line 3, column 1: key 'listen' appears twice",
    ),
    "duplicate key inside a route": (
        "routes:\n  - name: a\n    name: b\n",
        "line 3, column 5: key 'name' appears twice",
    ),
    "empty file": ("", "the file is empty (expected a mapping of settings)"),
    "only comments": ("# nothing yet\n", "the file is empty (expected a mapping of settings)"),
    "top-level list": ("- listen: {port: 8080}\n", "the top level must be a mapping, not list"),
    "list as a key": (
        "routes:\n  - decision: {map: {[a, b]: c}}\n",
        "line 2, column 22: a key must be a single value, not a list or mapping",
    ),
    "non-text key": ("listen: {8080: port}\n", "listen: 8080 is not a setting name (setting names are text)"),
}


@pytest.mark.parametrize("text, expected", FILE_PROBLEMS.values(), ids=FILE_PROBLEMS.keys())
def test_unreadable_config_file_fails_check_with_one_line(
    text: str,
    expected: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(text)
    assert run_check("config.yaml", capsys)[:2] == (2, [f"config.yaml: {expected}"])


def test_missing_config_file_fails_check_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_check("nowhere.yaml", capsys)[:2] == (2, ["nowhere.yaml: no such file"])
    Path("conf").mkdir()
    assert run_check("conf", capsys)[:2] == (2, ["conf: is a folder, not a file"])


# --- policies named by the config ---------------------------------------------------------------------


def test_missing_policy_names_the_shipped_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("config.yaml").write_text(yaml.safe_dump(config_with(**{"routes.0.policy": "no-such-policy"})))
    names = shipped_policies()
    shipped = f"shipped: {', '.join(names)}" if names else "none is shipped"
    expected = f"'no-such-policy' is neither a file nor a shipped policy ({shipped})"
    code, errors, _ = run_check("config.yaml", capsys)
    assert (code, errors) == (2, [f"config.yaml: routes[0].policy: {expected}"])


def test_invalid_policy_field_is_reported_against_the_policy_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_example(tmp_path)
    policy = Path("example-policy.yaml")
    policy.write_text(policy.read_text().replace("window: 24h", "window: 1 day", 1))
    code, errors, _ = run_check("config.yaml", capsys)
    field = "promote.shadow_to_assisted.window"
    assert (code, errors) == (2, [f"example-policy.yaml: {field}: '1 day' is not a duration {DURATION_HINT}"])


def test_policy_problems_name_the_policy_as_the_user_can_open_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "deploy" / "policies").mkdir(parents=True)
    (tmp_path / "deploy" / "policies" / "p.yaml").write_text("evaluate: 30s\n")
    raw = config_with(**{"routes.0.policy": "policies/p.yaml"})
    (tmp_path / "deploy" / "config.yaml").write_text(yaml.safe_dump(raw))
    assert run_check("deploy/config.yaml", capsys)[:2] == (
        2,
        ["deploy/policies/p.yaml: evaluate: unknown key (did you mean 'evaluate_every'?)"],
    )


def test_config_and_policy_problems_are_reported_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("p.yaml").write_text("evaluate_every: often\n")
    raw = config_with(**{"routes.0.policy": "p.yaml", "routes.0.stage": "live"})
    Path("config.yaml").write_text(yaml.safe_dump(raw))
    assert run_check("config.yaml", capsys)[:2] == (
        2,
        [
            "config.yaml: routes[0].stage: 'live' is not one of 'shadow', 'assisted' or 'autonomous'",
            f"p.yaml: evaluate_every: 'often' is not a duration {DURATION_HINT}",
        ],
    )


@pytest.mark.parametrize(
    "rollback",
    [
        "rollback: {window: 5m, min_samples: 100, agreement_below: 0.8, to: shadow}\n",
        "rollback:\n  - {window: 5m, min_samples: 100, agreement_below: 0.8, to: shadow}\n",
    ],
    ids=["mapping", "list"],
)
def test_rollback_may_be_one_rule_or_a_list(rollback: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(rollback)
    policy = load_policy(path)
    assert [(r.window, r.min_samples, r.agreement_below, r.to) for r in policy.rollback] == [
        (300.0, 100, 0.8, "shadow")
    ]


@pytest.mark.parametrize(
    "rollback, field",
    [
        ("rollback: {window: 5m, to: shadow}\n", "rollback"),
        ("rollback:\n  - {window: 5m, p99_above: 1s}\n  - {window: 5m, to: shadow}\n", "rollback[1]"),
    ],
    ids=["mapping", "list"],
)
def test_rollback_rule_without_a_threshold_is_an_error(rollback: str, field: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(rollback)
    with pytest.raises(ConfigError) as caught:
        load_policy(path, "p.yaml")
    assert caught.value.problems == [
        f"p.yaml: {field}: a rollback rule needs agreement_below, error_rate_above or p99_above"
    ]


def test_shipped_default_policy_resolves_by_name(tmp_path: Path) -> None:
    shipped = shipped_policy_dir() / "default.yaml"
    if not shipped.is_file():
        pytest.skip("policies/default.yaml is not written yet")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_with(**{"routes.0.policy": "default"})))
    loaded = load_config(path, environ={})
    assert loaded.policy_files == {"loan": shipped}
    assert "default" in shipped_policies()


# --- environment overrides ----------------------------------------------------------------------------


def test_environment_overrides_scalars_by_path(tmp_path: Path) -> None:
    config = load_config(
        write_example(tmp_path),
        environ={
            "SHADOW_PROXY_STORE__URL": "redis://redis:6379/0",
            "SHADOW_PROXY_ROUTES__0__STAGE": "assisted",
            "SHADOW_PROXY_ROUTES__0__MODEL__TIMEOUT": "1.5s",
            "SHADOW_PROXY_AUDIT__INCLUDE_BODIES": "true",
            "SHADOW_PROXY_LISTEN__PORT": "9090",
        },
    ).config
    assert config.store.url == "redis://redis:6379/0"
    assert (config.routes[0].stage, config.routes[0].model.timeout) == ("assisted", 1.5)
    assert (config.audit.include_bodies, config.listen.port) == (True, 9090)


def test_environment_override_of_a_text_field_keeps_number_like_text(tmp_path: Path) -> None:
    environ = {"SHADOW_PROXY_ROUTES__0__MODEL__VERSION": "1.10"}
    assert load_config(write_example(tmp_path), environ=environ).config.routes[0].model.version == "1.10"


def test_environment_override_creates_a_section_the_file_leaves_out(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_with()))
    environ = {"SHADOW_PROXY_STORE__URL": "redis://redis:6379/2", "SHADOW_PROXY_AUDIT__REDACT": "[body.ssn]"}
    config = load_config(path, environ=environ).config
    assert (config.store.url, config.audit.redact) == ("redis://redis:6379/2", ["body.ssn"])


def test_prefixed_variables_that_name_no_field_are_ignored(tmp_path: Path) -> None:
    path = write_example(tmp_path)
    environ = {
        "SHADOW_PROXY_ADMIN_TOKEN": "s3cret",
        "SHADOW_PROXY_OUTCOMES_TOKEN": "t",
        "SHADOW_PROXY_ROUTES__9__STAGE": "autonomous",
        "SHADOW_PROXY_NO__SUCH__FIELD": "x",
        "OTHER_ROUTES__0__STAGE": "autonomous",
    }
    assert load_config(path, environ=environ).config == load_config(path, environ={}).config


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    environ = {"SHADOW_PROXY_ROUTES__0__STAGE": "live", "SHADOW_PROXY_AUDIT__REDACT": "[ssn]"}
    with pytest.raises(ConfigError) as caught:
        load_config(write_example(tmp_path), environ=environ)
    label = str(tmp_path / "config.yaml")
    assert caught.value.problems == [
        f"{label}: audit.redact[0] (from SHADOW_PROXY_AUDIT__REDACT): 'ssn' is not a redaction path "
        "(body.a.b or headers.name; '*' matches any key or item)",
        f"{label}: routes[0].stage (from SHADOW_PROXY_ROUTES__0__STAGE): "
        "'live' is not one of 'shadow', 'assisted' or 'autonomous'",
    ]


def test_check_applies_environment_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    write_example(tmp_path)
    monkeypatch.setenv("SHADOW_PROXY_ADMIN_TOKEN", "s3cret")
    monkeypatch.setenv("SHADOW_PROXY_ROUTES__0__MODEL__TIMEOUT", "2")
    assert run_check("config.yaml", capsys)[:2] == (
        2,
        [
            "config.yaml: routes[0].model.timeout (from SHADOW_PROXY_ROUTES__0__MODEL__TIMEOUT): "
            f"2 is not a duration: add a unit {DURATION_HINT}"
        ],
    )


# --- YAML as people write it ---------------------------------------------------------------------------


def test_yes_and_no_stay_labels_in_a_decision_map(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "audit: {include_bodies: yes}\n"
        "routes:\n"
        "  - name: fraud\n"
        "    primary: {url: http://127.0.0.1:9001}\n"
        "    model: {url: http://127.0.0.1:9002}\n"
        "    decision: {primary: fraud, model: fraud, compare: map, map: {yes: Y, no: N, true: Y}}\n"
    )
    config = load_config(path, environ={}).config
    assert config.routes[0].decision.map == {"yes": "Y", "no": "N", True: "Y"}
    assert config.audit.include_bodies is True


def test_log_level_may_be_written_in_capitals(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("log: {level: WARNING}\n")
    assert load_config(path, environ={}).config.log.level == "warning"


# --- durations and rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, seconds",
    [("250ms", 0.25), ("9ms", 0.009), ("30s", 30.0), ("1.5s", 1.5), ("10m", 600.0), ("1h", 3600.0),
     ("1d", 86400.0), ("0s", 0.0)],
)  # fmt: skip
def test_parse_duration_accepts_the_documented_forms(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["3 seconds", "1h30m", "-1s", "", "1.5", "5 min", "1w", ".5s", "1,5s", None])
def test_parse_duration_rejects_other_forms_with_the_hint(text: Any) -> None:
    with pytest.raises(ValueError, match=r"\(use 250ms, 30s, 10m, 1h\)"):
        parse_duration(text)


@pytest.mark.parametrize("number", [3, 0.5, 300])
def test_parse_duration_asks_for_a_unit_on_a_bare_number(number: float) -> None:
    with pytest.raises(ValueError, match=r"is not a duration: add a unit \(use 250ms"):
        parse_duration(number)


@pytest.mark.parametrize(
    "seconds, text",
    [(0.25, "250ms"), (1.5, "1500ms"), (30.0, "30s"), (90.0, "90s"), (600.0, "10m"), (5400.0, "90m"),
     (3600.0, "1h"), (86400.0, "1d"), (0.0, "0s")],
)  # fmt: skip
def test_format_duration_gives_the_shortest_exact_spelling(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_round_trips_any_whole_number_of_milliseconds(ms: int) -> None:
    seconds = ms / 1000
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize(
    "text, per_second, shown",
    [("200/s", 200.0, "200/s"), ("5000/m", 5000 / 60, "5000/m"), ("100/h", 100 / 3600, "100/h"),
     ("2.5/s", 2.5, "2.5/s")],
)  # fmt: skip
def test_parse_rate_accepts_the_documented_forms(text: str, per_second: float, shown: str) -> None:
    rate = parse_rate(text)
    assert rate.per_second == pytest.approx(per_second)
    assert str(rate) == shown


@pytest.mark.parametrize("text", ["200", 200, "0/s", "200/d", "fast", "200 per second", "/s", None])
def test_parse_rate_rejects_other_forms_with_the_hint(text: Any) -> None:
    with pytest.raises(ValueError, match=r"\(use 200/s, 5000/m\)"):
        parse_rate(text)


# --- budgets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget, burst",
    [({"rate": "50/s"}, 50), ({"rate": "6000/m"}, 100), ({"rate": "1/m"}, 1),
     ({"rate": "50/s", "burst": 7}, 7), ({}, None)],
)  # fmt: skip
def test_budget_burst_defaults_to_one_seconds_worth_of_the_rate(budget: dict[str, Any], burst: int | None) -> None:
    assert Budget.model_validate(budget).burst_calls == burst


def test_budget_burst_default_applies_to_a_loaded_config(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_with(**{"routes.0.budget.rate": "6000/m"})))
    assert load_config(path, environ={}).config.routes[0].budget.burst_calls == 100
