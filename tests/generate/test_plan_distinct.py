"""A plan pays for each prompt once: distinct prompts, deterministic for a seed, repeats only on request."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import ConfigError, GenerateError
from pipeline.generate.plan import build_requests, plan_lineage, plan_requests
from pipeline.generate.render import PROMPTS_DIR, load_templates
from pipeline.generate.sampler import SEED_VARIABLES, load_vocabulary, sample_row, seed_space
from pipeline.io import list_shards

ROOT = Path(__file__).resolve().parents[2]
AUDIENCES = len({d for _, d, _ in load_vocabulary(PROMPTS_DIR / "seeds").audiences})


def _prompts_with_a_small_template(tmp_path: Path) -> Path:
    """The project's prompts plus ``greeting``: one prompt per audience, so its space is easy to spend."""
    prompts = tmp_path / "prompts"
    (prompts / "seeds").mkdir(parents=True)
    for p in (PROMPTS_DIR / "seeds").glob("*.yaml"):
        (prompts / "seeds" / p.name).write_text(p.read_text())
    (prompts / "greeting.j2").write_text("{#- requires: [audience] -#}\nGreet {{ audience }} in one sentence.\n")
    return prompts


def _plan(tmp_path: Path, num_samples: int, templates: str = "{greeting: 1}", seed: int = 0,
          generations_per_prompt: int | None = None):
    cfg = load_config(None, [f"run_dir={tmp_path}", f"seed={seed}", f"generate.num_samples={num_samples}",
                             f"generate.prompts_dir={_prompts_with_a_small_template(tmp_path)}",
                             f"generate.templates={templates}"])
    templates_ = load_templates(Path(cfg.generate.prompts_dir), cfg.generate.templates, SEED_VARIABLES)
    vocab = load_vocabulary(Path(cfg.generate.prompts_dir) / "seeds")
    return build_requests(cfg.generate, cfg.seed, templates_, vocab, [], generations_per_prompt)


def test_the_default_config_plans_5000_distinct_prompts_keeping_every_draw_that_repeats_nothing():
    cfg = load_config(ROOT / "configs" / "default.yaml", ["generate.num_samples=5000"])
    rows, templates = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert len(rows) == 5000 and rows["prompt"].is_unique and rows["id"].is_unique
    # a row whose own first draw repeats no earlier prompt keeps it: distinctness moves only the repeats
    vocab = load_vocabulary(PROMPTS_DIR / "seeds")
    requires = {name: t.requires for name, t in templates.items()}
    earlier: set[str] = set()
    moved = 0
    for i, planned in enumerate(rows["prompt"]):
        first = sample_row(cfg.seed, i, cfg.generate.templates, requires, vocab)
        prompt = templates[first["template"]].render(first)
        if prompt in earlier:
            moved += 1
        else:
            assert planned == prompt, i
        earlier.add(planned)
    assert 0 < moved < 250  # the independent draws repeated themselves (131 times at 5,000 rows)


def test_same_seed_same_plan_and_a_smaller_plan_is_a_prefix_even_where_draws_repeat(tmp_path):
    full = _plan(tmp_path / "a", AUDIENCES)
    again = _plan(tmp_path / "b", AUDIENCES)
    assert list(full["id"]) == list(again["id"]) and list(full["prompt"]) == list(again["prompt"])
    assert full["prompt"].is_unique and full["audience"].nunique() == AUDIENCES  # the whole space, each once
    prefix = _plan(tmp_path / "c", AUDIENCES - 3)
    assert list(prefix["id"]) == list(full["id"][: AUDIENCES - 3])
    other = _plan(tmp_path / "d", AUDIENCES, seed=1)
    assert list(other["prompt"]) != list(full["prompt"]) and set(other["prompt"]) == set(full["prompt"])


def test_a_plan_that_spends_most_of_a_templates_prompts_warns(tmp_path, capsys):
    _plan(tmp_path / "few", 3)
    assert "warning" not in capsys.readouterr().err
    _plan(tmp_path / "most", AUDIENCES - 1)
    assert f"template 'greeting' has {AUDIENCES - 1} of its at most {AUDIENCES} distinct prompts" \
        in capsys.readouterr().err


def test_more_rows_than_distinct_prompts_is_an_error_saying_how_many_are_possible(tmp_path):
    with pytest.raises(GenerateError, match=rf"'generate.num_samples': {AUDIENCES + 1} rows at "
                       rf"generate.generations_per_prompt=1 need {AUDIENCES + 1} distinct prompts, but the "
                       rf"templates greeting can make at most {AUDIENCES};"):
        _plan(tmp_path, AUDIENCES + 1)


def test_the_cli_refuses_an_exhausted_plan_on_one_line_before_any_request(tmp_path, capsys):
    code = main(["generate", f"run_dir={tmp_path}", "generate.base_url=http://127.0.0.1:9/v1",
                 f"generate.prompts_dir={_prompts_with_a_small_template(tmp_path)}", "generate.templates={greeting: 1}",
                 f"generate.num_samples={AUDIENCES * 2}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and f"can make at most {AUDIENCES}" in err[-1]
    assert not (tmp_path / "generated").exists() or not list_shards(tmp_path / "generated")


def test_several_generations_per_prompt_repeat_each_distinct_prompt_on_consecutive_rows(tmp_path):
    rows = _plan(tmp_path / "a", 3 * AUDIENCES - 1, generations_per_prompt=3)
    assert rows["id"].is_unique and len(rows) == 3 * AUDIENCES - 1
    groups = [list(rows["prompt"][k:k + 3]) for k in range(0, len(rows), 3)]
    assert all(len(set(g)) == 1 for g in groups)  # the last group is cut to the rows asked for
    assert len({g[0] for g in groups}) == AUDIENCES
    once = _plan(tmp_path / "b", AUDIENCES)
    assert [g[0] for g in groups] == list(once["prompt"])  # prompt p is the same draw as row p of a plan of singles
    with pytest.raises(GenerateError, match=f"need {AUDIENCES + 1} distinct prompts"):
        _plan(tmp_path / "c", 3 * AUDIENCES + 1, generations_per_prompt=3)


def test_generations_per_prompt_is_a_config_key_of_the_plan_and_its_lineage(tmp_path):
    base = [f"run_dir={tmp_path}", "generate.num_samples=9", "generate.templates={story: 1}"]
    repeated = load_config(None, [*base, "generate.generations_per_prompt=3"])
    rows, templates = plan_requests(repeated.generate, repeated.seed, repeated.run_dir)
    assert rows["prompt"].nunique() == 3 and rows["id"].is_unique
    once = load_config(None, base)
    assert plan_lineage(once.generate, once.seed, once.run_dir, templates) != \
        plan_lineage(repeated.generate, repeated.seed, repeated.run_dir, templates)
    with pytest.raises(ConfigError, match="config key 'generate.generations_per_prompt': input should be greater"):
        load_config(None, [*base, "generate.generations_per_prompt=0"])


def test_seed_space_counts_the_declared_variables_only():
    vocab = load_vocabulary(PROMPTS_DIR / "seeds")
    subtopics = {(s, t, sub) for s, _, topics in vocab.subjects for t, subs in topics.items() for sub in subs}
    assert seed_space(["audience"], vocab) == AUDIENCES
    assert seed_space(["topic"], vocab) == len({t for _, t, _ in subtopics})
    assert seed_space(["subject", "topic", "subtopic", "audience"], vocab) == len(subtopics) * AUDIENCES
    features = len(vocab.features)
    assert seed_space(["features"], vocab) == features * features  # one, or an ordered pair of two different
    assert seed_space(["extract"], vocab, extracts=["a", "b", "a"]) == 2
    assert seed_space(["topic", "grade"], vocab, own={"grade": (("3", 1.0), ("8", 2.0))}) == \
        2 * seed_space(["topic"], vocab)
