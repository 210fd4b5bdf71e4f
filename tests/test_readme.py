"""The README's config reference is the config itself: `make docs` regenerates it."""

from pathlib import Path

from pipeline.config import reference_markdown

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
