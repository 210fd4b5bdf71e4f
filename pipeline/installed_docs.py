"""Human-written text that every installation has, with no network: Python's reference documentation,
the installed packages' READMEs and license files, and the standard library's docstrings.

It is the demo's web text when the Hugging Face Hub is unreachable. Like a web crawl it is mixed:
prose that teaches (the language reference, module overviews), boilerplate that repeats (the same
MIT and Apache licenses in dozens of packages: work for exact and near dedup), code-heavy and
list-like pages (work for the heuristics and the language filter), and short fragments.
"""

from __future__ import annotations

import ast
import re
import sysconfig
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pandas as pd
import xxhash

NAME = "installed documentation (Python's reference, package READMEs and licenses, stdlib docstrings)"
MIN_CHARS = 200
MAX_FILE_BYTES = 200_000
_LICENSE_NAMES = ("licen", "copying", "notice")
_KEEP_LINE = re.compile(r"^(\s{4}|\t|\s*([-*+>|]|\d+[.)])\s|\s*```|\s*>>>)")


def installed_docs() -> pd.DataFrame:
    """Columns ``id``, ``text``, ``url`` (where the text lives); the same rows for the same installation.

    Rows come in an order fixed by their ids' hashes, so any prefix is a mix of every kind.
    """
    rows = {doc_id: (text, where) for doc_id, raw, where in _documents() if len(text := unwrap(raw)) >= MIN_CHARS}
    ids = sorted(rows, key=lambda i: xxhash.xxh64_intdigest(i.encode()))
    return pd.DataFrame({"id": ids, "text": [rows[i][0] for i in ids], "url": [rows[i][1] for i in ids]})


def unwrap(text: str) -> str:
    """Each hard-wrapped paragraph on one line, as text extracted from a web page has it; list items
    and indented (code) lines keep their own lines."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text.strip()):
        lines = paragraph.split("\n")
        if any(_KEEP_LINE.match(line) for line in lines):
            out.append(paragraph)
        else:
            out.append(" ".join(line.strip() for line in lines))
    return "\n\n".join(out)


def _documents() -> Iterator[tuple[str, str, str]]:
    yield from _python_reference()
    yield from _package_texts()
    yield from _stdlib_docstrings()


def _python_reference() -> Iterator[tuple[str, str, str]]:
    from pydoc_data.topics import topics

    for name, text in sorted(topics.items()):
        yield f"python-docs/{name}", text, f"pydoc_data.topics:{name}"


def _package_texts() -> Iterator[tuple[str, str, str]]:
    dists = {d.metadata["Name"]: d for d in metadata.distributions() if d.metadata["Name"]}
    for name in sorted(dists, key=str.lower):
        dist = dists[name]
        description = dist.metadata.get_payload() or dist.metadata.get("Description") or ""
        if description:
            yield f"readme/{name}", str(description), f"{name} {dist.version}: METADATA"
        for file in dist.files or []:
            if not file.name.lower().startswith(_LICENSE_NAMES):
                continue
            path = Path(str(dist.locate_file(file)))
            if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                yield f"license/{name}/{file}", path.read_text(errors="replace"), f"{name} {dist.version}: {file}"


def _stdlib_docstrings() -> Iterator[tuple[str, str, str]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        relative = path.relative_to(stdlib)
        if {"test", "tests", "site-packages", "idlelib", "lib2to3"} & set(relative.parts):
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError):
            continue
        for node in [tree, *(n for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef)))]:
            doc = ast.get_docstring(node)
            if doc:
                where = f"{relative}" + (f":{node.name}" if not isinstance(node, ast.Module) else "")
                yield f"stdlib/{where}", doc, f"Python {sysconfig.get_python_version()} stdlib {where}"
