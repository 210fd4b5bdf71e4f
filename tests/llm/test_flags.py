"""Quality flags on completions and the one-line warnings a run's flags give."""

from __future__ import annotations

from pipeline.llm.flags import completion_flags, cut_and_looping, flagged_warning, greedy_warning

LESSON = ("Photosynthesis is how plants make food. Leaves take in carbon dioxide from the air and water "
          "from the roots. Sunlight gives the energy that joins them into sugar, and oxygen is let out. "
          "A common mistake is to think that plants get their mass from the soil; most of it comes from "
          "the air. In short: light, water and carbon dioxide in, sugar and oxygen out.")
LOOP = "I'm going to find out more about it.\n" * 6 + "That is what I think."


def test_a_looping_completion_is_flagged_repetitive_and_a_lesson_is_not():
    assert completion_flags(LOOP, "stop") == ["repetitive"]
    assert completion_flags(LESSON, "stop") == []
    assert completion_flags(LESSON, "length") == ["truncated"]
    assert completion_flags("  ", "stop") == ["empty"]
    assert completion_flags("I'm sorry, but I can't help with that request.", "stop") == ["refusal"]


def test_too_many_truncated_or_looping_rows_are_said_in_one_line_with_what_to_change():
    flags = [["truncated"]] * 20 + [["truncated", "repetitive"]] * 2 + [[]] * 2
    assert cut_and_looping(flags) == (20, 2)  # a row stopped in a loop counts as looping, not cut
    line = flagged_warning(flags, 128, 0.2)
    assert line is not None and "\n" not in line
    assert line.startswith("22 of 24 rows are flagged, over generate.max_flagged_share=20%")
    assert "20 hit generate.max_tokens=128" in line and "2 loop on a line" in line
    assert flagged_warning(flags, 128, 0.95) is None
    looping = flagged_warning([["repetitive"]] * 6 + [None] * 18, 512, 0.2)
    assert looping is not None and "6 loop" in looping and "max_tokens" not in looping


def test_a_server_that_ignores_the_temperature_is_named():
    prompts = ["a", "a", "b", "b", "c"]
    same = ["x", "x", "y", "y", "z"]
    line = greedy_warning(prompts, same, 0.8)
    assert line is not None and "transformers serve" in line and "do_sample" in line
    assert greedy_warning(prompts, ["x", "x2", "y", "y", "z"], 0.8) is None  # one prompt varied: sampling works
    assert greedy_warning(prompts, same, 0.0) is None  # greedy was asked for
    assert greedy_warning(["a", "b", "c"], ["x", "x", "x"], 0.8) is None  # no repeated prompt to tell by
