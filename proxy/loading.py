"""Read a config file and the policies it names, apply environment overrides, report problems.

Every problem becomes one line ``FILE: FIELD: what is wrong`` in :class:`ConfigError`, which the
CLI prints without a traceback. Relative paths (audit folders, policy files) resolve against the
config file's folder, so a config works the same from any working directory.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from proxy.config import Config, FieldProblem, Policy
from proxy.units import format_duration, parse_duration

ENV_PREFIX = "SHADOW_PROXY_"
_PACKAGE_DIR = Path(__file__).resolve().parent


class ConfigError(Exception):
    """One or more problems, each a finished line for the user."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Loaded:
    """A validated config with its policies resolved (route name -> policy)."""

    config: Config
    path: Path | None = None
    policies: dict[str, Policy] = field(default_factory=dict)
    policy_files: dict[str, Path] = field(default_factory=dict)


def shipped_policy_dir() -> Path:
    """Policies installed with the package (wheel), or the repo's ``policies/`` (editable install)."""
    installed = _PACKAGE_DIR / "_policies"
    return installed if installed.is_dir() else _PACKAGE_DIR.parent / "policies"


def shipped_policies() -> list[str]:
    return sorted(p.stem for p in shipped_policy_dir().glob("*.yaml"))


# --- YAML -------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.MarkedYAMLError(
                problem="a key must be a single value, not a list or mapping",
                problem_mark=key_node.start_mark,
            ) from None
        if key in seen:
            mark = key_node.start_mark
            raise yaml.MarkedYAMLError(problem=f"key {key!r} appears twice", problem_mark=mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

# Only true/false are booleans (as in YAML 1.2 and JSON). YAML 1.1 also reads yes/no/on/off/y/n as
# booleans, which would silently turn a decision label such as ``no`` (in ``decision.map``, a route
# name, a model version) into ``False``. Boolean settings still accept yes/no/on/off as text.
_BOOL_TAG = "tag:yaml.org,2002:bool"
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_UniqueKeyLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: Path, label: str) -> dict[str, Any]:
    """Parse a YAML mapping; raise ConfigError naming the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{label}: no such file"]) from None
    except IsADirectoryError:
        raise ConfigError([f"{label}: is a folder, not a file"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{label}: is not UTF-8 text"]) from None
    except OSError as exc:
        raise ConfigError([f"{label}: cannot read ({exc.strerror or exc})"]) from None
    try:
        data = _load_yaml(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError([f"{label}: {where}{exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{label}: not valid YAML ({exc})"]) from None
    if data is None:
        raise ConfigError([f"{label}: the file is empty (expected a mapping of settings)"])
    if not isinstance(data, dict):
        raise ConfigError([f"{label}: the top level must be a mapping, not {type(data).__name__}"])
    return data


# --- environment overrides --------------------------------------------------------------------


def _unwrap(tp: Any) -> Any:
    """Strip Annotated and Optional from a type annotation."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _env_value(raw: str, target: Any) -> Any:
    """Strings stay strings for str fields; anything else is read as a YAML scalar or list."""
    if target is str:
        return raw
    try:
        value = _load_yaml(raw)
    except yaml.YAMLError:
        return raw
    return value if not isinstance(value, dict) else raw


def _set_path(node: Any, model: Any, parts: list[str], raw: str) -> bool:
    """Set ``parts`` in the raw config tree if they name a field of ``model``; False otherwise."""
    head, rest = parts[0], parts[1:]
    if _is_model(model):
        info = model.model_fields.get(head)
        if info is None or not isinstance(node, dict):
            return False
        child_type = _unwrap(info.annotation)
        if not rest:
            node[head] = _env_value(raw, child_type)
            return True
        if node.get(head) is None:
            if not _is_model(child_type):
                return False
            node[head] = {}
        return _set_path(node[head], child_type, rest, raw)
    if typing.get_origin(model) is list and head.isdigit() and isinstance(node, list):
        index = int(head)
        if index >= len(node) or not rest:
            return False
        return _set_path(node[index], _unwrap(typing.get_args(model)[0]), rest, raw)
    return False


def apply_env_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> dict[str, str]:
    """Apply ``SHADOW_PROXY_<PATH>`` variables to ``raw`` in place.

    ``__`` separates path parts, list items are numbers (``ROUTES__0__STAGE``). Variables that name
    no field are ignored. Returns dotted field path -> variable name, for error messages.
    """
    applied: dict[str, str] = {}
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if all(parts) and _set_path(raw, Config, parts, environ[name]):
            applied[_dotted(tuple(int(p) if p.isdigit() else p for p in parts))] = name
    return applied


# --- errors -----------------------------------------------------------------------------------


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(model: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(part, int):
            model = _unwrap(typing.get_args(model)[0]) if typing.get_origin(model) is list else None
        elif _is_model(model) and part in model.model_fields:
            model = _unwrap(model.model_fields[part].annotation)
        else:
            return None
    return model


def _field_info(root: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    parent = _model_at(root, loc[:-1])
    if loc and _is_model(parent):
        return parent.model_fields.get(loc[-1])
    return None


def _is_duration(info: Any) -> bool:
    """Whether a field (or its Optional/Annotated type) is parsed by :func:`parse_duration`."""
    stack = [*getattr(info, "metadata", []), getattr(info, "annotation", None)]
    while stack:
        item = stack.pop()
        if getattr(item, "func", None) is parse_duration:
            return True
        stack.extend(typing.get_args(item))
        stack.extend(getattr(item, "__metadata__", ()))
    return False


def _describe(value: Any) -> str:
    """A value in the user's (YAML) words."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


_LIMITS = {
    "greater_than": ("gt", "more than"),
    "greater_than_equal": ("ge", "at least"),
    "less_than": ("lt", "less than"),
    "less_than_equal": ("le", "at most"),
}


def _message(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    kind, loc, value = err["type"], err["loc"], err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        known = list(parent.model_fields) if _is_model(parent) else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        return "unknown key" + (hint if known else "")
    if kind == "missing":
        return "required but missing"
    if kind == "invalid_key":
        return f"{_describe(value)} is not a setting name (setting names are text)"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind in ("literal_error", "enum"):
        return f"{_describe(value)} is not one of {err['ctx']['expected']}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        if value is None:
            return "empty (expected a mapping of settings)"
        return f"expected a mapping of settings, not {_describe(value)}"
    if kind == "list_type":
        return "empty (expected a list)" if value is None else f"expected a list, not {_describe(value)}"
    if value is None:
        return "empty (a value is needed)"
    if kind == "string_type":
        if isinstance(value, bool):
            return f"{_describe(value)} is a boolean, not text (put it in quotes)"
        if isinstance(value, int | float):
            return f"{value!r} is a number, not text (put it in quotes)"
        return f"expected text, not {_describe(value)}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{_describe(value)} is not a whole number"
    if kind in ("float_parsing", "float_type"):
        return f"{_describe(value)} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{_describe(value)} is not true or false"
    if kind in _LIMITS:
        key, words = _LIMITS[kind]
        limit = err["ctx"][key]
        if _is_duration(_field_info(root, loc)):
            got = format_duration(value) if isinstance(value, int | float) else str(value)
            return f"must be {words} {format_duration(limit)} (got {got})"
        shown = f"{limit:g}" if isinstance(limit, int | float) else str(limit)
        return f"must be {words} {shown} (got {_describe(value)})"
    msg = err["msg"].replace("Input should be", "should be").replace("Value error, ", "")
    return f"{_describe(value)}: {msg}" if not isinstance(value, dict | list) else msg


def _env_source(where: str, env: Mapping[str, str]) -> str | None:
    """The variable that set ``where`` or a value above it (``audit.redact`` for ``audit.redact[0]``)."""
    for path, name in env.items():
        if where == path or where.startswith((path + ".", path + "[")):
            return name
    return None


def _problems(
    label: str,
    exc: ValidationError,
    root: type[BaseModel],
    env: Mapping[str, str],
    single_rollback: bool = False,
) -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, FieldProblem):
            loc += error.loc
        if err["type"] == "invalid_key":
            loc = loc[:-1]  # the key itself is the problem, not a field under it
        if single_rollback and loc[:2] == ("rollback", 0):
            loc = ("rollback", *loc[2:])  # the file gave one rule as a mapping, not a list
        where = _dotted(loc)
        source = _env_source(where, env) if where else None
        tag = f" (from {source})" if source else ""
        prefix = f"{label}: {where}{tag}: " if where else f"{label}: "
        lines.append(prefix + _message({**err, "loc": loc}, root))
    return lines


# --- loading ----------------------------------------------------------------------------------


def _resolve_dirs(config: Config, base: Path) -> Config:
    audit = config.audit
    update: dict[str, Any] = {"spill_dir": str((base / audit.spill_dir).resolve())}
    if audit.sink.startswith("file://"):
        update["sink"] = "file://" + str((base / audit.sink[len("file://") :]).resolve())
    return config.model_copy(update={"audit": audit.model_copy(update=update)})


def _policy_path(value: str, base: Path) -> Path | None:
    candidate = base / value
    if candidate.is_file():
        return candidate
    if "/" not in value and not value.endswith((".yaml", ".yml")):
        shipped = shipped_policy_dir() / f"{value}.yaml"
        if shipped.is_file():
            return shipped
    return None


def load_policy(path: Path, label: str | None = None) -> Policy:
    label = label or str(path)
    raw = read_yaml(path, label)
    try:
        return Policy.model_validate(raw)
    except ValidationError as exc:
        single = isinstance(raw.get("rollback"), dict)
        raise ConfigError(_problems(label, exc, Policy, {}, single_rollback=single)) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Loaded:
    """Load, override from the environment, validate, resolve paths and policies.

    Every problem is reported at once: an invalid config still has the policies it names checked.
    """
    label = str(path)
    path = Path(path)
    raw = read_yaml(path, label)
    env = apply_env_overrides(raw, os.environ if environ is None else environ)
    base = path.resolve().parent
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = _problems(label, exc, Config, env)
        routes = raw.get("routes")
        refs = [
            (i, route["policy"])
            for i, route in enumerate(routes if isinstance(routes, list) else [])
            if isinstance(route, dict) and isinstance(route.get("policy"), str)
        ]
        problems += _check_policies(refs, base, label)[2]
        raise ConfigError(problems) from None
    return _load_policies(_resolve_dirs(config, base), path, base, label)


def _policy_label(value: str, found: Path, base: Path, label: str) -> str:
    """How to name a policy file in messages: as the user could open it, or the shipped file's path."""
    if (base / value).is_file():
        return os.path.normpath(os.path.join(os.path.dirname(label), value))
    return str(found)


def _check_policies(
    refs: list[tuple[int, str]], base: Path, label: str
) -> tuple[dict[int, Policy], dict[int, Path], list[str]]:
    """Find and validate each route's policy: (route index -> policy, -> file, problems)."""
    problems: list[str] = []
    policies: dict[int, Policy] = {}
    files: dict[int, Path] = {}
    cache: dict[Path, Policy | None] = {}
    for i, value in refs:
        found = _policy_path(value, base)
        if found is None:
            looked = os.path.normpath(os.path.join(os.path.dirname(label), value))
            where = f" ({looked})" if looked != value else ""
            names = shipped_policies()
            shipped = f"shipped: {', '.join(names)}" if names else "none is shipped"
            problems.append(
                f"{label}: routes[{i}].policy: {value!r} is neither a file{where} nor a shipped policy ({shipped})"
            )
            continue
        if found not in cache:
            try:
                cache[found] = load_policy(found, _policy_label(value, found, base, label))
            except ConfigError as exc:
                problems.extend(exc.problems)
                cache[found] = None
        policy = cache[found]
        if policy is not None:
            policies[i] = policy
            files[i] = found
    return policies, files, problems


def _load_policies(config: Config, path: Path | None, base: Path, label: str) -> Loaded:
    refs = [(i, route.policy) for i, route in enumerate(config.routes) if route.policy is not None]
    policies, files, problems = _check_policies(refs, base, label)
    if problems:
        raise ConfigError(problems)
    names = [route.name for route in config.routes]
    return Loaded(
        config=config,
        path=path,
        policies={names[i]: policy for i, policy in policies.items()},
        policy_files={names[i]: file for i, file in files.items()},
    )


def loaded_from_config(config: Config, base: Path | None = None) -> Loaded:
    """Wrap a Config built in code (tests, demo): resolve its paths and policies like a file's."""
    base = base or Path.cwd()
    return _load_policies(_resolve_dirs(config, base), None, base, "config")
