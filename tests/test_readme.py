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


def test_the_contents_list_every_section_in_order_with_working_links():
    import re

    text = README.read_text(encoding="utf-8")
    body = re.sub(r"```.*?```", "", text, flags=re.S)  # headings inside code blocks are not sections
    headings = [h for h in re.findall(r"^#{2,3} (.+)$", body, re.M) if h != "Contents"]
    contents = text.split("## Contents\n", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"^\s*- \[(.+?)\]\(#(.+?)\)$", contents, re.M)
    assert [title for title, _ in links] == headings
    for title, anchor in links:  # GitHub's anchors: lower case, punctuation dropped, spaces as '-'
        assert anchor == re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-"), title
