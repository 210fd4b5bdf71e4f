"""Templates, seed vocabularies and sampling: deterministic, declared, validated."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError, GenerateError
from pipeline.generate.conversation import parse_conversation
from pipeline.generate.plan import build_requests, plan_requests
from pipeline.generate.render import PROMPTS_DIR, load_template, load_templates
from pipeline.generate.sampler import SEED_VARIABLES, load_vocabulary, sample_row

MIX = {"textbook": 0.35, "exercises": 0.2, "story": 0.15, "conversation": 0.15, "wikihow": 0.15}


def test_project_vocabulary_is_broad_and_weighted():
    vocab = load_vocabulary(PROMPTS_DIR / "seeds")
    assert len(vocab.subjects) >= 20
    assert vocab.topic_count >= 300
    assert all(subtopics for _, _, topics in vocab.subjects for subtopics in topics.values())
    names = [name for name, _, _ in vocab.audiences]
    assert "young children" in names and "researchers" in names
    assert len(vocab.nouns) >= 50 and len(vocab.verbs) >= 50 and len(vocab.adjectives) >= 30


def test_every_project_template_loads_declares_and_renders():
    templates = load_templates(PROMPTS_DIR, {**MIX, "web_textbook": 1}, SEED_VARIABLES)
    vocab = load_vocabulary(PROMPTS_DIR / "seeds")
    requires = {n: t.requires for n, t in templates.items()}
    for name, template in templates.items():
        assert len(template.sha) == 16 and template.about
        row = sample_row(0, 0, {name: 1.0}, requires, vocab, extracts=["Tides are caused by the Moon."])
        prompt = template.render(row)
        assert "{{" not in prompt and "None" not in prompt
        assert all(row[v] for v in template.requires)
        assert all(row[v] is None for v in SEED_VARIABLES if v not in template.requires)


def test_row_prompt_depends_on_the_seed_and_earlier_rows_not_on_later_ones():
    small = build_requests(*_plan_inputs(num_samples=5, seed=7))
    large = build_requests(*_plan_inputs(num_samples=40, seed=7))
    pd.testing.assert_frame_equal(small, large.iloc[:5], check_dtype=False)
    assert large["id"].is_unique
    other_seed = build_requests(*_plan_inputs(num_samples=40, seed=8))
    assert (other_seed["prompt"] != large["prompt"]).sum() > 30


def test_row_key_changes_with_model_sampling_and_template_version(tmp_path):
    base = build_requests(*_plan_inputs(num_samples=3))
    hotter = build_requests(*_plan_inputs(num_samples=3, temperature=0.2))
    other_model = build_requests(*_plan_inputs(num_samples=3, model="other"))
    assert not set(base["id"]) & set(hotter["id"])
    assert not set(base["id"]) & set(other_model["id"])
    assert list(base["prompt"]) == list(hotter["prompt"])
    edited = _copy_prompts(tmp_path)
    (edited / "story.j2").write_text((edited / "story.j2").read_text() + "\nKeep it under 200 words.\n")
    cfg = load_config(None, [f"generate.prompts_dir={edited}", "generate.templates={story: 1}",
                             "generate.num_samples=3"])
    original = load_config(None, ["generate.templates={story: 1}", "generate.num_samples=3"])
    edited_ids = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)[0]["id"]
    assert not set(edited_ids) & set(plan_requests(original.generate, original.seed, original.run_dir)[0]["id"])


def test_template_mix_weights_are_followed():
    rows = build_requests(*_plan_inputs(num_samples=600, templates={"story": 3, "wikihow": 1}))
    share = (rows["template"] == "story").mean()
    assert 0.68 < share < 0.82


def test_undeclared_variable_is_rejected_at_load(tmp_path):
    path = tmp_path / "bad.j2"
    path.write_text("{#- requires: [topic] -#}\nExplain {{ topic }} to {{ audince }}.\n")
    with pytest.raises(GenerateError, match=r"bad\.j2: uses variable 'audince' that its header does not declare"):
        load_template(path, SEED_VARIABLES)


def test_missing_header_unknown_variable_and_syntax_errors_name_the_file(tmp_path):
    cases = {
        "noheader.j2": ("Explain {{ topic }}.", "must start with a header comment"),
        "unknown.j2": ("{#- requires: [colour] -#}\n{{ colour }}", "requires unknown seed variable 'colour'"),
        "syntax.j2": ("{#- requires: [topic] -#}\n{% if topic %}open", r"syntax\.j2:\d+: template syntax error"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(GenerateError, match=message):
            load_template(tmp_path / name, SEED_VARIABLES)


def test_render_without_a_declared_variable_is_a_clear_error():
    template = load_template(PROMPTS_DIR / "textbook.j2", SEED_VARIABLES)
    with pytest.raises(GenerateError, match=r"textbook\.j2: missing template variable 'style'"):
        template.render({"subject": "Physics", "topic": "Waves", "subtopic": "interference", "audience": "x"})


def test_sandbox_blocks_unsafe_attribute_access(tmp_path):
    path = tmp_path / "evil.j2"
    path.write_text("{#- requires: [topic] -#}\n{{ topic.__class__.__mro__ }}")
    with pytest.raises(Exception, match="unsafe|not safely|access"):
        load_template(path, SEED_VARIABLES).render({"topic": "x"})


@pytest.mark.parametrize(("mix", "message"), [
    ("{textbook: 1, lecture_notes: 1}", r"config key 'generate.templates': unknown template 'lecture_notes'"),
    ("{textbook: 1, story: 0}", r"config key 'generate.templates.story': weight must be positive"),
    ("{textbook: -2}", r"config key 'generate.templates.textbook': weight must be positive"),
])
def test_bad_template_mix_names_the_config_key(mix, message):
    cfg = load_config(None, [f"generate.templates={mix}"])
    with pytest.raises(ConfigError, match=message):
        plan_requests(cfg.generate, cfg.seed, cfg.run_dir)


def test_web_seeded_template_needs_web_seed_path_and_uses_extracts(tmp_path):
    cfg = load_config(None, ["generate.templates={web_textbook: 1}", "generate.num_samples=4"])
    with pytest.raises(GenerateError, match="generate.web_seed.path"):
        plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    web = tmp_path / "web.parquet"
    pd.DataFrame({"body": ["Tides rise and fall twice a day " * 40, "", "Bees dance to share where food is."]}
                 ).to_parquet(web)
    cfg = load_config(None, ["generate.templates={web_textbook: 1}", "generate.num_samples=4",
                             f"generate.web_seed.path=[{web}]", "generate.web_seed.text_column=body",
                             "generate.web_seed.max_chars=100"])
    rows, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert set(rows["extract"]) <= {("Tides rise and fall twice a day " * 3).strip(),
                                    "Bees dance to share where food is."}
    assert all(len(e) <= 100 and e in p for e, p in zip(rows["extract"], rows["prompt"], strict=True))


def test_malformed_seed_yaml_names_the_file_line_and_column(tmp_path):
    prompts = _copy_prompts(tmp_path)
    (prompts / "seeds" / "styles.yaml").write_text("styles:\n  - {name: plain, about: [unclosed\n")
    cfg = load_config(None, [f"generate.prompts_dir={prompts}"])
    with pytest.raises(GenerateError, match=r"styles\.yaml:3:1: invalid YAML: expected ',' or ']'"):
        plan_requests(cfg.generate, cfg.seed, cfg.run_dir)


def test_parse_conversation_alternates_user_and_assistant():
    text = ("Here is the conversation.\n"
            "Teacher: Welcome back.\n"
            "Student: Why is the sky blue?\n"
            "**Teacher:** Sunlight scatters off air molecules,\nand blue light scatters most.\n"
            "Student: So red scatters least?\n"
            "Student: Sorry, I mean: is that why sunsets are red?\n"
            "Teacher: Exactly.\n"
            "Student: Thanks!")
    assert parse_conversation(text) == [
        {"role": "user", "content": "Why is the sky blue?"},
        {"role": "assistant", "content": "Sunlight scatters off air molecules,\nand blue light scatters most."},
        {"role": "user", "content": "So red scatters least?\nSorry, I mean: is that why sunsets are red?"},
        {"role": "assistant", "content": "Exactly."},
    ]
    assert parse_conversation("A story with no speakers.") == []
    assert parse_conversation("Student: only a question?") == []


def _plan_inputs(num_samples=10, seed=0, templates=None, **gen):
    overrides = [f"seed={seed}", f"generate.num_samples={num_samples}"]
    overrides += [f"generate.{k}={v}" for k, v in gen.items()]
    if templates:
        overrides.append("generate.templates={" + ", ".join(f"{k}: {v}" for k, v in templates.items()) + "}")
    cfg = load_config(None, overrides)
    templates_ = load_templates(PROMPTS_DIR, cfg.generate.templates, SEED_VARIABLES)
    return cfg.generate, cfg.seed, templates_, load_vocabulary(PROMPTS_DIR / "seeds"), []


def _copy_prompts(tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(PROMPTS_DIR, tmp_path / "prompts"))


# subtopic (945) x grade x region: a space far larger than the ~1,000 lessons drawn from it, so making
# prompts distinct (later draws avoid earlier prompts) barely moves the weights the test checks
OWN = '''{#-
about: A lesson for one school grade, in a region's context.
requires: [subtopic]
variables:
  grade: {values: {"grade 3": 1, "grade 8": 2}}
  region: {file: regions.yaml}
-#}
Teach {{ subtopic }} to a {{ grade }} class in {{ region }}.
'''


def _own_prompts(tmp_path: Path) -> Path:
    prompts = tmp_path / "prompts"
    (prompts / "seeds").mkdir(parents=True)
    for p in (PROMPTS_DIR / "seeds").glob("*.yaml"):
        (prompts / "seeds" / p.name).write_text(p.read_text())
    (prompts / "seeds" / "regions.yaml").write_text("values: [Kenya, Peru, Norway]\n")
    (prompts / "grade_lesson.j2").write_text(OWN)
    (prompts / "textbook.j2").write_text((PROMPTS_DIR / "textbook.j2").read_text())
    return prompts


def test_a_template_owns_its_seed_variables_with_weights_and_they_become_columns(tmp_path):
    prompts = _own_prompts(tmp_path)
    cfg = load_config(None, [f"run_dir={tmp_path}", f"generate.prompts_dir={prompts}", "generate.num_samples=1500",
                             "generate.templates={grade_lesson: 2, textbook: 1}"])
    rows, templates = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert templates["grade_lesson"].variables["grade"] == (("grade 3", 1.0), ("grade 8", 2.0))
    lessons = rows[rows["template"] == "grade_lesson"]
    assert {"grade", "region"} <= set(rows.columns)
    assert lessons["grade"].notna().all() and set(lessons["region"]) == {"Kenya", "Peru", "Norway"}
    share = (lessons["grade"] == "grade 8").mean()
    assert 0.62 < share < 0.72, share  # weight 2 of 3
    assert rows.loc[rows["template"] == "textbook", "grade"].isna().all()
    first = lessons.iloc[0]
    assert first["prompt"] == f"Teach {first['subtopic']} to a {first['grade']} class in {first['region']}."
    again, _ = plan_requests(cfg.generate, cfg.seed, cfg.run_dir)
    assert list(again["id"]) == list(rows["id"]) and list(again["prompt"]) == list(rows["prompt"])


@pytest.mark.parametrize("header, message", [
    ("variables:\n  topic: {values: [a]}", "shared seed variable"),
    ("variables:\n  grade: {values: {a: 0}}", "weight must be a positive number"),
    ("variables:\n  grade: {file: nowhere.yaml}", "not found"),
    ("variables:\n  grade: {values: [a], file: x.yaml}", "exactly one of values"),
])
def test_own_variable_mistakes_fail_at_load_naming_the_file(tmp_path, header, message):
    (tmp_path / "seeds").mkdir()
    path = tmp_path / "bad.j2"
    path.write_text("{#-\nrequires: []\n" + header + "\n-#}\n{{ grade if grade is defined else topic }}\n")
    with pytest.raises(GenerateError, match=message) as e:
        load_template(path, SEED_VARIABLES)
    assert str(path) in str(e.value) or "nowhere.yaml" in str(e.value)
