"""Prompt templates: sandboxed Jinja with StrictUndefined, a declared seed header and a version hash.

Every ``prompts/<name>.j2`` opens with a Jinja comment holding YAML::

    {#-
    about: what the template produces
    requires: [subject, topic, subtopic, audience, style]
    -#}

``requires`` names the seed variables the sampler must draw for it. A template may also own
variables of its own, declared with their vocabulary (inline values with relative weights, a plain
list for equal weights, or a file under the prompts folder's ``seeds/``)::

    {#-
    about: a lesson for one school grade
    requires: [topic]
    variables:
      grade: {values: {"grade 3": 1, "grade 8": 2}}
      region: {file: regions.yaml}    # seeds/regions.yaml: {values: {...}} or a list
    -#}

so a prompt family is added by dropping one file into ``prompts/``. Each row of the template draws
them (after the shared seeds, from the row's own RNG) and stores each as a column of its name.
Loading checks that the template parses, uses no variable it does not declare, and declares only
variables the sampler knows or it owns, so a typo fails before the first request. ``sha`` (of the file text) versions the template; it is part of
every row's ``id``, so editing a template never mixes old and new rows under one key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta
from jinja2 import Template as JinjaTemplate
from jinja2.sandbox import SandboxedEnvironment

from pipeline.errors import ConfigError, GenerateError

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"
_HEADER = re.compile(r"\A\s*\{#-?(.*?)-?#\}", re.DOTALL)


@dataclass(frozen=True)
class Template:
    """A loaded prompt template: its name, declared seed variables and version hash."""

    name: str
    path: Path
    text: str
    requires: tuple[str, ...]
    about: str
    sha: str
    variables: dict[str, tuple[tuple[str, float], ...]] = field(default_factory=dict)
    """The template's own variables: name -> ((value, weight), ...), drawn per row by the sampler."""

    def render(self, variables: Mapping[str, Any]) -> str:
        """The prompt for these seed values; a missing declared variable is a ``GenerateError``."""
        missing = [v for v in self.requires if v not in variables or variables[v] is None]
        if missing:
            raise GenerateError(f"{self.path}: missing template variable '{missing[0]}' "
                                f"(required: {', '.join(self.requires)})")
        try:
            return _compiled(self.text).render({k: variables[k] for k in self.requires}).strip()
        except UndefinedError as e:
            raise GenerateError(f"{self.path}: {e.message}") from None


def _environment() -> SandboxedEnvironment:
    # trim/lstrip so the header comment and block tags leave no stray blank lines in prompts
    return SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True,
                                lstrip_blocks=True, keep_trailing_newline=False)


@lru_cache(maxsize=64)
def _compiled(text: str) -> JinjaTemplate:
    """A template's text compiled once: a plan renders it for thousands of rows."""
    return _environment().from_string(text)


def load_template(path: Path, known_variables: Iterable[str]) -> Template:
    """Read, parse and check one template file (see the module docstring for the header)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    header = _HEADER.match(text)
    try:
        meta_data = yaml.safe_load(header.group(1)) if header else None
    except yaml.YAMLError as e:
        raise GenerateError(f"{path}: header comment is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(meta_data, dict) or not isinstance(meta_data.get("requires"), list):
        raise GenerateError(f"{path}: must start with a header comment declaring its seed variables, "
                            "e.g. {#- requires: [topic, audience] -#}")
    own = _own_variables(path, meta_data.get("variables"))
    requires = tuple(dict.fromkeys([*(str(v) for v in meta_data["requires"]), *own]))
    known = set(known_variables)
    clash = [v for v in own if v in known or v in RESERVED_COLUMNS]
    if clash:
        raise GenerateError(f"{path}: variable '{clash[0]}' is a shared seed variable or a generated column; "
                            "give the template's own variable another name")
    known |= set(own)
    unknown = [v for v in requires if v not in known]
    if unknown:
        raise GenerateError(f"{path}: requires unknown seed variable '{unknown[0]}' "
                            f"(the sampler knows: {', '.join(sorted(known))})")
    try:
        used = meta.find_undeclared_variables(_environment().parse(text))
    except TemplateSyntaxError as e:
        raise GenerateError(f"{path}:{e.lineno}: template syntax error: {e.message}") from None
    undeclared = sorted(used - set(requires))
    if undeclared:
        raise GenerateError(f"{path}: uses variable '{undeclared[0]}' that its header does not declare "
                            f"(requires: {', '.join(requires)})")
    return Template(name=path.stem, path=path, text=text, requires=requires,
                    about=str(meta_data.get("about", "")),
                    sha=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16], variables=own)


RESERVED_COLUMNS = frozenset({
    "id", "messages", "prompt", "template", "template_sha", "text", "model", "temperature", "max_tokens",
    "finish_reason", "prompt_tokens", "completion_tokens", "latency_s", "flags", "source", "source_id",
    "chunk", "route", "document", "faithfulness"})
"""Names a template's own variable may not take: the generated row's other columns."""


def _own_variables(path: Path, spec: Any) -> dict[str, tuple[tuple[str, float], ...]]:
    """The header's ``variables``: name -> weighted values, from inline ``values`` or a seeds ``file``."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise GenerateError(f"{path}: header 'variables' must map a name to {{values: ...}} or {{file: ...}}")
    own = {}
    for name, entry in spec.items():
        if not isinstance(entry, dict) or ("values" in entry) == ("file" in entry):
            raise GenerateError(f"{path}: variable '{name}': give exactly one of values (inline) or file "
                                "(a YAML file under seeds/)")
        where = f"{path}: variable '{name}'"
        values = entry.get("values")
        if "file" in entry:
            vocab_path = path.parent / "seeds" / str(entry["file"])
            where = f"{vocab_path}"
            try:
                data = yaml.safe_load(vocab_path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise GenerateError(f"{path}: variable '{name}': vocabulary file {vocab_path} not found") from None
            except yaml.YAMLError as e:
                raise GenerateError(f"{vocab_path}: invalid YAML: {str(e).splitlines()[0]}") from None
            values = data.get("values") if isinstance(data, dict) else data
        if isinstance(values, list):
            values = {v: 1 for v in values}
        if not isinstance(values, dict) or not values:
            raise GenerateError(f"{where}: needs a non-empty list of values or a mapping value -> weight")
        pairs = []
        for value, weight in values.items():
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise GenerateError(f"{where}: value {value!r}: weight must be a positive number (got {weight!r})")
            pairs.append((str(value), float(weight)))
        own[str(name)] = tuple(pairs)
    return own


def load_templates(prompts_dir: Path, mix: Mapping[str, float], known_variables: Iterable[str]) -> dict[str, Template]:
    """The templates of the config's mix (``generate.templates``), checked; weights must be positive."""
    if not mix:
        raise ConfigError("config key 'generate.templates': empty; name at least one template with a weight")
    available = sorted(p.stem for p in Path(prompts_dir).glob("*.j2"))
    known = list(known_variables)
    templates = {}
    for name, weight in mix.items():
        if not weight > 0:
            raise ConfigError(f"config key 'generate.templates.{name}': weight must be positive (got {weight})")
        path = Path(prompts_dir) / f"{name}.j2"
        if not path.is_file():
            raise ConfigError(f"config key 'generate.templates': unknown template '{name}' "
                              f"(no {path}; available: {', '.join(available)})")
        templates[name] = load_template(path, known)
    return templates
