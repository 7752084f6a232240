"""Typed configuration: YAML files loaded into dataclasses, with `key.sub=value` command-line overrides.

A config file is a YAML mapping. It may name a file it extends with `base: other.yaml` (relative to itself); the
base is loaded first and this file's keys are merged over it, mapping by mapping. Overrides from the command line
(`training.lr=3e-4`, `arch.mlp_t=true`) are applied last; their values are parsed as YAML scalars.

Every key is checked against the dataclass it fills: an unknown key, a wrong type or a missing required value is a
`ConfigError` that names the key, the file it came from and the valid keys. We check types ourselves instead of
pulling in a schema library because the messages are the feature: a typo in a 40-key config must point at itself.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that cannot be used as written; the message says where and why."""


class HelpRequested(Exception):
    """`-h` / `--help` on a config-driven recipe; `hybrid.utils.run_main` prints the recipe's usage and exits 0."""


CLI_USAGE = """\
usage: [--config FILE] [key=value ...]
  --config FILE   a YAML config (configs/ holds ready ones; `base: other.yaml` extends another file)
  key=value       dotted overrides applied last, values read as YAML: training.lr=3e-4 run.resume=auto"""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


def _merge(base: dict, over: dict, sources: dict, origin: str, prefix: str = "") -> dict:
    """Merge `over` into a copy of `base`, recording in `sources` which file each leaf key came from."""
    out = dict(base)
    for key, value in over.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, sources, origin, dotted + ".")
        else:
            out[key] = value
            sources[dotted] = origin
            for other in [k for k in sources if k.startswith(dotted + ".")]:
                sources[other] = origin
        if isinstance(value, dict):
            for sub in _leaf_keys(value, dotted + "."):
                sources[sub] = origin
    return out


def _leaf_keys(mapping: dict, prefix: str) -> list[str]:
    keys = []
    for key, value in mapping.items():
        keys.append(prefix + key)
        if isinstance(value, dict):
            keys.extend(_leaf_keys(value, prefix + key + "."))
    return keys


def load_yaml_tree(path: str | Path, sources: dict | None = None, _seen: tuple = ()) -> dict:
    """Read a config file and the chain of `base:` files it extends, merged, without type checking."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ConfigError(f"config files extend each other in a cycle: {chain}")
    sources = {} if sources is None else sources
    data = _read_yaml(path)
    base = data.pop("base", None)
    tree: dict = {}
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: 'base' must be a file path (string), got {base!r}")
        tree = load_yaml_tree(path.parent / base, sources, (*_seen, path))
    return _merge(tree, data, sources, str(path))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], parsed value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")) or " " in key:
        raise ConfigError(
            f"bad override {text!r}: expected key=value with a dotted key, for example training.lr=3e-4"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(tree: dict, overrides: list[str], sources: dict) -> dict:
    tree = dict(tree)
    for text in overrides:
        path, value = parse_override(text)
        node = tree
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{part}' holds a value, not a section")
            node[part] = child = dict(child)
            node = child
        node[path[-1]] = value
        sources[".".join(path)] = "command line"
    return tree


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where lossless: int -> float)."""

    def fail(expected: str):
        raise ConfigError(
            f"{origin}: key '{key}' must be {expected}, got {value!r} ({type(value).__name__})"
        )

    if tp is Any:
        return value
    origin_tp = get_origin(tp)
    if origin_tp in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, origin)
            except ConfigError:
                continue
        fail(" or ".join(_type_name(o) for o in options))
    if origin_tp is Literal:
        if value not in get_args(tp):
            fail("one of " + ", ".join(repr(a) for a in get_args(tp)))
        return value
    if origin_tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            fail(f"a list ({_type_name(tp)})")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]", origin) for i, v in enumerate(value)]
        return items if origin_tp is list else tuple(items)
    if origin_tp is dict:
        if not isinstance(value, dict):
            fail("a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            fail(f"a mapping (section {_type_name(tp)})")
        return value  # built by _build
    if tp is bool:
        if not isinstance(value, bool):
            fail("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail("an integer")
        return value
    if tp is float:
        if isinstance(value, str):
            # YAML 1.1 reads 3e-4 (no dot) as a string; every user writes it that way.
            try:
                return float(value)
            except ValueError:
                fail("a number")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            fail("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail("a string")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    fail(_type_name(tp))


def _build(cls: type[T], data: dict, sources: dict, prefix: str, default_origin: str) -> T:
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(
            f"{sources.get(key, default_origin)}: unknown key '{key}'. "
            f"Valid keys{' in ' + prefix[:-1] if prefix else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, field in fields.items():
        key = prefix + name
        origin = sources.get(key, default_origin)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{default_origin}: required key '{key}' is missing")
            continue
        tp = hints[name]
        value = _coerce(data[name], tp, key, origin)
        nested = _dataclass_in(tp)
        if nested is not None and isinstance(value, dict):
            value = _build(nested, value, sources, key + ".", default_origin)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{default_origin}: invalid section '{prefix[:-1] or cls.__name__}': {err}") from None


def _dataclass_in(tp: Any):
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def from_dict(cls: type[T], data: dict, *, origin: str = "<dict>") -> T:
    """Build (and type-check) a config dataclass from a plain mapping."""
    return _build(cls, data, {}, "", origin)


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `path` (following its `base:` chain), apply `overrides`, and build a checked `cls`."""
    sources: dict = {}
    tree = load_yaml_tree(path, sources) if path is not None else {}
    tree = apply_overrides(tree, list(overrides or []), sources)
    return _build(cls, tree, sources, "", str(Path(path).resolve()) if path is not None else "<defaults>")


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def save_config(config: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (saved with every run, so a run can be re-created exactly)."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))


def split_cli(argv: list[str]) -> tuple[str | None, list[str]]:
    """Split `--config FILE key=value ...` into the file and the overrides (shared by every recipe)."""
    path, overrides, i = None, [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            raise HelpRequested()
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file path")
            path, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config="):
            path = arg.split("=", 1)[1]
        elif "=" in arg and not arg.startswith("-"):
            overrides.append(arg)
        else:
            raise ConfigError(f"unexpected argument {arg!r}: use --config FILE and key=value overrides")
        i += 1
    return path, overrides


__all__ = [
    "CLI_USAGE",
    "ConfigError",
    "HelpRequested",
    "apply_overrides",
    "from_dict",
    "load_config",
    "load_yaml_tree",
    "parse_override",
    "save_config",
    "split_cli",
    "to_dict",
]

