"""Read a config file and the policies it names, apply environment overrides, report problems.

Every problem becomes one line ``FILE: FIELD: what is wrong`` in :class:`ConfigError`, which the
CLI prints without a traceback. Relative paths (audit folders, policy files) resolve against the
config file's folder, so a config works the same from any working directory.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from proxy.config import Config, Policy

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
        if key in seen:
            mark = key_node.start_mark
            raise yaml.MarkedYAMLError(problem=f"key {key!r} appears twice", problem_mark=mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: Path, label: str) -> dict[str, Any]:
    """Parse a YAML mapping; raise ConfigError naming the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{label}: no such file"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{label}: cannot read ({exc})"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
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
        value = yaml.safe_load(raw)
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


def _message(err: Mapping[str, Any], root: type[BaseModel]) -> str:
    kind, loc = err["type"], err["loc"]
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        known = list(parent.model_fields) if _is_model(parent) else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(known)})"
        return "unknown key" + (hint if known else "")
    if kind == "missing":
        return "required but missing"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind in ("literal_error", "enum"):
        return f"{err['input']!r} is not one of {err['ctx']['expected']}"
    msg = err["msg"].replace("Input should be", "should be").replace("Value error, ", "")
    return f"{err['input']!r}: {msg}" if not isinstance(err["input"], dict | list) else msg


def _problems(label: str, exc: ValidationError, root: type[BaseModel], env: Mapping[str, str]) -> list[str]:
    lines = []
    for err in exc.errors():
        where = _dotted(err["loc"])
        source = f" (from {env[where]})" if where in env else ""
        prefix = f"{label}: {where}{source}: " if where else f"{label}: "
        lines.append(prefix + _message(err, root))
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
        raise ConfigError(_problems(label, exc, Policy, {})) from None


def load_config(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Loaded:
    """Load, override from the environment, validate, resolve paths and policies."""
    label = str(path)
    path = Path(path)
    raw = read_yaml(path, label)
    env = apply_env_overrides(raw, os.environ if environ is None else environ)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_problems(label, exc, Config, env)) from None
    base = path.resolve().parent
    return _load_policies(_resolve_dirs(config, base), path, base, label)


def _load_policies(config: Config, path: Path | None, base: Path, label: str) -> Loaded:
    problems: list[str] = []
    policies: dict[str, Policy] = {}
    files: dict[str, Path] = {}
    cache: dict[Path, Policy | None] = {}
    for i, route in enumerate(config.routes):
        if route.policy is None:
            continue
        found = _policy_path(route.policy, base)
        if found is None:
            names = ", ".join(shipped_policies()) or "none"
            problems.append(
                f"{label}: routes[{i}].policy: {route.policy!r} is neither a file next to {label} "
                f"nor a shipped policy ({names})"
            )
            continue
        if found not in cache:
            shown = route.policy if (base / route.policy).is_file() else str(found)
            try:
                cache[found] = load_policy(found, shown)
            except ConfigError as exc:
                problems.extend(exc.problems)
                cache[found] = None
        if cache[found] is not None:
            policies[route.name] = cache[found]  # type: ignore[assignment]
            files[route.name] = found
    if problems:
        raise ConfigError(problems)
    return Loaded(config=config, path=path, policies=policies, policy_files=files)


def loaded_from_config(config: Config, base: Path | None = None) -> Loaded:
    """Wrap a Config built in code (tests, demo): resolve its paths and policies like a file's."""
    base = base or Path.cwd()
    return _load_policies(_resolve_dirs(config, base), None, base, "config")
