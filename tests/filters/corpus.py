"""Realistic, reproducible test documents: varied prose that passes the web heuristics by default.

Documents are built from sentence templates over a vocabulary large enough that two documents
share almost no word 5-grams, so every near-duplicate in a test is one the test planted.
"""

from __future__ import annotations

import random

SUBJECTS = ["the student", "a farmer", "the engineer", "our teacher", "the committee", "a young doctor",
            "the river", "the old library", "a small village", "the research team", "the city council",
            "a curious child", "the museum", "the orchestra", "a local baker", "the football club"]
VERBS = ["explained", "described", "measured", "discovered", "questioned", "repaired", "painted",
         "studied", "visited", "organised", "compared", "recorded", "protected", "designed", "counted"]
OBJECTS = ["the water cycle", "an ancient map", "the price of bread", "the speed of sound",
           "a broken bridge", "the school garden", "the history of trade", "a new vaccine",
           "the migration of birds", "the rules of chess", "a solar panel", "the harvest festival",
           "the shape of the coast", "a folk song", "the phases of the moon", "the tax records"]
TAILS = ["before the winter began", "with great care and patience", "in front of the whole class",
         "after a long and difficult week", "because nobody else had tried", "using only simple tools",
         "while the rain kept falling", "to help the people of the region", "for the first time in years",
         "and wrote a short report about it", "with the support of their neighbours",
         "so that everyone could learn from it", "during the spring of that year"]
CONNECTORS = ["Later,", "Meanwhile,", "However,", "As a result,", "In the end,", "At first,", "Then",
              "Surprisingly,", "Of course,", "Every morning"]


def document(rng: random.Random, paragraphs: int = 3, sentences: int = 4) -> str:
    """A few paragraphs (about 150 words); no phrase repeats within a document, as in real prose."""
    n = paragraphs * sentences
    parts = [rng.sample(pool, n) for pool in (SUBJECTS, VERBS, OBJECTS, TAILS)]
    starts = [rng.choice(CONNECTORS) for _ in range(n)]
    lines = [f"{c} {s} {v} {o} {t}." for c, s, v, o, t in zip(starts, *parts, strict=True)]
    return "\n\n".join(" ".join(lines[i:i + sentences]) for i in range(0, n, sentences))


def documents(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [document(rng) for _ in range(n)]


def near_duplicate(text: str, seed: int = 0, edits: int = 3) -> str:
    """``text`` with a few words replaced: word 5-gram Jaccard stays well above 0.8 for ~150 words."""
    rng = random.Random(seed)
    words = text.split(" ")
    for _ in range(edits):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["remarkable", "quietly", "indeed", "nearby", "carefully"])
    return " ".join(words)


SPAM = ("Buy cheap watches now! Click here! Free prize! Subscribe today! Best offer! "
        "Limited time only! Win big! Sale sale sale!")
