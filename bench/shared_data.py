"""Where a benchmark's text comes from, said on one line, so anyone can rerun it.

Some benchmarks read real third-party data a clone does not ship: web pages with their boilerplate,
MMLU, GSM8K, LLM-labelled FineWeb-Edu texts, graded near-duplicate pairs. They look for it in the
folder ``--data`` names (or ``TEXTBOOK_BENCH_DATA``; by default ``../shared/data`` beside the
repository, where the project's own machines keep it) and print ``data: ...`` with what they used.
Where a file is missing they build a stand-in from text every machine has (Python's documentation,
man pages) and say so, or, where nothing can stand in (language-labelled pages), name the file and
where to get it.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT.parent / "shared" / "data"

# what each file is and where to get it (the project machines' copy: DEFAULT/README.md)
FETCH = {
    "web": "real web pages as JSONL with a `text` field (the project's: adbar/trafilatura's test pages and "
           "scrapinghub/article-extraction-benchmark's ground truth, as text)",
    "web/trafilatura_pages.jsonl": "web pages in several languages as JSONL (`text`, `lang_guess`): the HTML "
                                   "test pages of github.com/adbar/trafilatura (tests/cache, tests/eval) as text",
    "benchmarks/gsm8k_test.jsonl": "GSM8K test: github.com/openai/grade-school-math, grade_school_math/data/test.jsonl",
    "benchmarks/mmlu/test": "MMLU test CSVs (question, four choices, answer): github.com/hendrycks/test, or "
                            "cais/mmlu on the Hub",
    "edu_labels/fineweb_edu_llm_scored_150.csv": "FineWeb-Edu texts scored 0-5 by an LLM (columns text, score): "
                                                 "github.com/Mohamed-Elsafty23/fineweb-edu-scorer, "
                                                 "data/training_data.csv",
    "near_dup/pairs.jsonl": "the Clough & Stevenson short-answer text-reuse corpus as JSONL "
                            "(answer, source, category cut/light/heavy/non)",
}
_ROFF = re.compile(r"\\f[BIRP]|\\\(..|\\[-&e|^]|\\s[-+]?\d")


def add_argument(parser: argparse.ArgumentParser) -> None:
    """``--data DIR``: the folder of third-party data (default: TEXTBOOK_BENCH_DATA, else ../shared/data)."""
    parser.add_argument("--data", type=Path, default=None,
                        help=f"folder of third-party benchmark data (default: $TEXTBOOK_BENCH_DATA or {DEFAULT})")


def root(given: Path | None = None) -> Path:
    return Path(given or os.environ.get("TEXTBOOK_BENCH_DATA") or DEFAULT)


def use(given: Path | None) -> None:
    """Make ``--data`` the folder every helper (and every child process of the benchmark) reads."""
    if given is not None:
        os.environ["TEXTBOOK_BENCH_DATA"] = str(given)


def find(rel: str, what: str, given: Path | None = None, stand_in: str | None = None) -> Path | None:
    """``root/rel`` when it exists (said on a ``data:`` line), else None with a line saying what stands
    in for it (``stand_in``) or, with none, a SystemExit naming the file and where to get it."""
    path = root(given) / rel
    if path.exists():
        print(f"data: {what}: {path}")
        return path
    where = f"{path} not found (it is {FETCH[rel]}; point --data at a folder holding {rel})"
    if stand_in is None:
        raise SystemExit(f"bench: needs {what}: {where}")
    print(f"data: {what}: {where}; using {stand_in} instead")
    return None


def python_docs() -> list[str]:
    """The topic pages of Python's own documentation (pydoc_data), which every Python install has."""
    from pydoc_data.topics import topics

    return [t for t in topics.values() if t.strip()]


def man_page_text(path: Path) -> str:
    """Plain text of one roff man page: request lines dropped, font escapes removed ("" if unreadable)."""
    try:
        with gzip.open(path, "rt", errors="replace") as f:
            raw = f.read()
    except (OSError, EOFError):
        return ""
    return "\n\n".join(_ROFF.sub("", line) for line in raw.splitlines() if line and not line.startswith((".", "'")))


def man_pages(limit_bytes: int = 60_000_000) -> Iterator[str]:
    """Plain text of the machine's man pages (roff requests dropped, font escapes removed)."""
    total = 0
    for path in sorted(Path("/usr/share/man").glob("man[1-8]/*.gz")):
        text = man_page_text(path)
        if text.strip():
            yield text
            total += len(text)
            if total > limit_bytes:
                return
