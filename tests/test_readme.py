"""The README's config reference is the config itself: `make docs` regenerates it."""

from pathlib import Path

from pipeline.config import reference_markdown, reference_rows

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_config_reference_is_current():
    text = README.read_text(encoding="utf-8")
    start, end = "<!-- config-reference:start -->\n", "<!-- config-reference:end -->"
    embedded = text.split(start, 1)[1].split(end, 1)[0]
    assert embedded == reference_markdown(), "README config reference is stale: run `make docs`"


def test_quickstart_names_exactly_the_two_commands():
    quickstart = README.read_text(encoding="utf-8").split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [line.split("#")[0].strip() for line in quickstart.split("```bash", 1)[1].split("```")[0].splitlines()]
    assert [c for c in commands if c] == ["make test", "make demo"]


def test_the_reference_documents_a_key_by_the_docstring_under_its_field():
    """Read from the source when asked (not at import); a subclass that only changes a default
    keeps its base's docstring."""
    described = {key: description for key, _, description in reference_rows()}
    assert described["generate.concurrency"] == "In-flight requests across the whole cluster."
    assert described["train.phase2.mixture"] == described["train.phase1.mixture"] != ""
    assert described["filter.partition_mb"].startswith("Text per partition of local Parquet inputs")
