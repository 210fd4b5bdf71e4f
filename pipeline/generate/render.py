"""Prompt templates: sandboxed Jinja with StrictUndefined, a declared seed header and a version hash.

Every ``prompts/<name>.j2`` opens with a Jinja comment holding YAML::

    {#-
    about: what the template produces
    requires: [subject, topic, subtopic, audience, style]
    -#}

``requires`` names the seed variables the sampler must draw for it. Loading checks that the template
parses, uses no variable it does not declare, and declares only variables the sampler knows, so a
typo fails before the first request. ``sha`` (of the file text) versions the template; it is part of
every row's ``id``, so editing a template never mixes old and new rows under one key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
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
    requires = tuple(str(v) for v in meta_data["requires"])
    known = set(known_variables)
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
                    sha=hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])


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
