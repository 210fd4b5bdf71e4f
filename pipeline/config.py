"""Typed run config: a YAML file plus dotted `key=value` overrides, validated with errors naming the key.

Each stage owns its section (``pipeline/<stage>/config.py``); this module only assembles them and
turns pydantic's errors into one line a user can act on.
"""

from __future__ import annotations

import ast
import difflib
import functools
import inspect
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from pipeline.classify.config import AnnotateConfig, ClassifierConfig
from pipeline.errors import ConfigError
from pipeline.eval.config import EvalConfig
from pipeline.filter.config import FilterConfig
from pipeline.generate.config import GenerateConfig
from pipeline.hub.config import HubConfig
from pipeline.io import read_yaml
from pipeline.settings import Section, strip_secrets
from pipeline.settings import public_dict as public_dict  # where stages import it from
from pipeline.train.config import TrainConfig


class Config(Section):
    run_dir: Path = Path("runs/default")
    """Where every stage reads and writes (generated/, filtered/, checkpoints/, card/, ...)."""
    seed: int = 0
    """Seeds prompt sampling, splits, mixtures and model init: the same seed gives the same run."""
    scheduler: str | None = None
    """Address of an existing dask.distributed scheduler; None starts a LocalCluster."""
    workers: int | None = None
    """LocalCluster workers (default: one per core). generate and annotate against a server run on one in-process worker unless this is above 1; filter runs small and dedup-only inputs on this many threads in the process (filter.in_process)."""
    generate: GenerateConfig = GenerateConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    filter: FilterConfig = FilterConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    hub: HubConfig = HubConfig()


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read ``path`` (YAML), apply ``key=value`` overrides (values parsed as YAML), validate.

    A command-line value wins over the file: where the file sets a key that excludes the one the
    command line sets (``filter.quality.keep_top`` against ``threshold``), the file's key is dropped.
    An error is blamed on the override that caused it, not on the file.
    """
    source = str(path) if path else "<defaults>"
    data: dict[str, Any] = {}
    if path:
        data = _read_yaml(Path(path))
    given: dict[str, str] = {}
    for override in overrides:
        key, sep, raw = override.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {override!r}: expected key=value, e.g. generate.num_samples=50")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            raise ConfigError(f"override {override!r}: value is not valid YAML") from None
        set_dotted(data, key, value)
        given[key] = override
        if value is not None:
            _drop_excluded(data, key)
    return validate(data, source, given)


def _read_yaml(path: Path) -> dict[str, Any]:
    data = read_yaml(path, ConfigError, "config file") or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def _drop_excluded(data: dict[str, Any], key: str) -> None:
    """Remove the keys that ``key``'s section declares mutually exclusive with it."""
    *parents, leaf = key.split(".")
    model: type[BaseModel] = Config
    node: Any = data
    for part in parents:
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or not isinstance(node, dict):
            return
        model, node = annotation, node.get(part)
    if not isinstance(node, dict):
        return
    for group in getattr(model, "exclusive_keys", ()):
        if leaf in group:
            for other in group:
                if other != leaf:
                    node.pop(other, None)


def validate(data: dict[str, Any], source: str = "<config>", overrides: dict[str, str] | None = None) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        key = ".".join(str(p) for p in e.errors()[0]["loc"])
        culprit = _override_for(key, overrides or {})
        raise ConfigError(f"{f'override {culprit!r}' if culprit else source}: {describe(e)}") from None


def _override_for(key: str, overrides: dict[str, str]) -> str | None:
    """The override that set ``key``, a key under it, or a section above it."""
    for given, text in overrides.items():
        if given == key or given.startswith(key + ".") or key.startswith(given + "."):
            return text
    return None


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    *parents, leaf = key.split(".")
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(parents[: i + 1])}' is not a section")
        node = child
    node[leaf] = value


def describe(error: ValidationError) -> str:
    """The first validation error as ``config key 'a.b': what is wrong``."""
    first = error.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join(loc)
    if first["type"] == "extra_forbidden":
        hint = _closest(loc)
        return f"config key '{key}': unknown key" + (f" (did you mean '{hint}'?)" if hint else "")
    if first["type"] == "missing":
        return f"config key '{key}': required"
    value = first.get("input")
    message = first["msg"].removeprefix("Value error, ")
    if isinstance(value, dict):  # a section-level rule: its message already says what to change
        return f"config key '{key}': {message}"
    return f"config key '{key}': {message[:1].lower() + message[1:]} (got {value!r})"


def _closest(loc: list[str]) -> str | None:
    model: type[BaseModel] = Config
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    match = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)
    return ".".join([*loc[:-1], match[0]]) if match else None


def reference_rows(model: type[BaseModel] = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every leaf key of the config, in declaration order."""
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(reference_rows(annotation, f"{key}."))
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        shown = yaml.safe_dump(strip_secrets({"v": _jsonable(default)}), default_flow_style=True,
                               width=10_000).strip()[4:-1]
        description = " ".join((field.description or field_docs(model).get(name, "")).split())
        rows.append((key, shown, description))
    return rows


@functools.cache
def field_docs(model: type[BaseModel]) -> dict[str, str]:
    """The docstring under each annotated field of ``model`` and its base classes (``x: int = 1``
    then a string literal), read from the source when asked, as the reference does."""
    docs: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if not issubclass(cls, BaseModel) or cls is BaseModel:
            continue
        try:
            body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
        except (OSError, TypeError, IndexError, AttributeError):  # no source (a class made at run time)
            continue
        for node, after in zip(body, body[1:], strict=False):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                    and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) \
                    and isinstance(after.value.value, str):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    return value


def reference_markdown() -> str:
    """The config reference table that README.md embeds (a test keeps the two in sync)."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for key, default, description in reference_rows():
        cell = default.replace("|", "\\|")
        if len(cell) > 60:
            cell = cell[:57] + "..."
        lines.append(f"| `{key}` | `{cell}` | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"
