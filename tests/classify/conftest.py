"""A labelled corpus built here: templated lessons vs. spam/boilerplate, sharing most vocabulary.

Both kinds of page use the same everyday words, names and numbers, a few lessons carry a cookie
banner and a few ads mention a school subject, and LLM-like 0-5 scores are noisy, so the task is
learnable but not trivially separable (two disjoint word lists make fastText degenerate).
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from pipeline.io import write_parquet
from tests.conftest import SENTENCES

SUBJECTS = ["biology", "chemistry", "physics", "algebra", "geometry", "history", "geography", "economics",
            "programming", "astronomy", "statistics", "grammar"]
CONCEPTS = ["photosynthesis", "a chemical bond", "kinetic energy", "a linear equation", "the area of a circle",
            "the industrial revolution", "plate tectonics", "supply and demand", "a recursive function",
            "the life cycle of a star", "the standard deviation", "the passive voice", "cell division",
            "the water cycle", "compound interest", "an electric circuit", "natural selection", "a fraction"]
THINGS = ["plants", "atoms", "students", "a ball", "the river", "prices", "the computer", "the planet", "a cell",
          "the market", "the city", "water", "light", "the engine", "the population", "a triangle"]
PRODUCTS = ["watches", "sneakers", "phones", "vitamins", "headphones", "sunglasses", "laptops", "perfume",
            "handbags", "gift cards", "supplements", "casino chips", "garden tools", "car parts"]
SHARED = ["today", "every day", "in the city", "at home", "this week", "for your family", "in the morning",
          "around the world", "near the river", "for students", "in the garden", "after work"]

LESSON = [
    "In {subject}, {concept} explains why {thing} change {shared}.",
    "To understand {concept}, first notice how {thing} behave when the conditions change.",
    "For example, if {thing} double in size, the effect on {thing2} is easy to measure {shared}.",
    "The key idea of {concept} is that every step follows from the previous one.",
    "Try this exercise: describe {concept} in your own words and give one example from {subject}.",
    "Scientists studied {thing} for many years before they could explain {concept}.",
    "A common mistake is to confuse {concept} with {concept2}; the difference matters in {subject}.",
    "Let us work through the problem step by step, checking each result against the definition.",
    "This chapter introduces {concept} and shows how it connects to {concept2}.",
    "Remember that {thing} follow the same rule {shared}, which is why the formula works.",
]
SPAM = [
    "Buy {product} now and save {n}% {shared}!",
    "Click here to win free {product}, limited offer, subscribe {shared}.",
    "Best prices on {product} {shared}, order before midnight and get free shipping.",
    "We use cookies to improve your experience; by continuing you accept our cookie policy.",
    "Sign up for our newsletter and never miss a deal on {product} again.",
    "Hot deal: {n} {product} for the price of one, only {shared}!",
    "Follow us on social media for exclusive coupons on {product}.",
    "Home | About | Contact | Shop {product} | Login | Register",
    "Copyright 2024 all rights reserved. Terms of service and privacy policy apply.",
    "Customers who bought {product} also bought {product2}; add them to your cart {shared}.",
]
COOKIE = "We use cookies to improve your experience; by continuing you accept our cookie policy."


def _fill(template: str, rng: random.Random) -> str:
    return template.format(
        subject=rng.choice(SUBJECTS), concept=rng.choice(CONCEPTS), concept2=rng.choice(CONCEPTS),
        thing=rng.choice(THINGS), thing2=rng.choice(THINGS), shared=rng.choice(SHARED),
        product=rng.choice(PRODUCTS), product2=rng.choice(PRODUCTS), n=rng.randint(2, 90))


def make_document(edu: bool, rng: random.Random) -> str:
    """One page of 3-7 sentences; lessons sometimes carry a banner, ads sometimes a school word."""
    pool = LESSON if edu else SPAM
    sentences = [_fill(rng.choice(pool), rng) for _ in range(rng.randint(3, 7))]
    if edu and rng.random() < 0.5:
        sentences.append(rng.choice(SENTENCES[:6] + SENTENCES[8:11]))
    if edu and rng.random() < 0.15:
        sentences.append(COOKIE)
    if not edu and rng.random() < 0.2:
        sentences.append(f"Great for {rng.choice(SUBJECTS)} class and {rng.choice(THINGS)}.")
    if not edu and rng.random() < 0.3:
        sentences.append(rng.choice(SENTENCES[6:8] + SENTENCES[11:]))
    rng.shuffle(sentences)
    return "\n".join(sentences)


def make_corpus(n: int, seed: int = 0, positive_share: float = 0.5) -> pd.DataFrame:
    """``n`` documents with ``id``, ``text`` and a noisy LLM-like ``score`` (lessons 2-5, ads 0-3)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        edu = rng.random() < positive_share
        score = rng.choice([3, 3, 4, 4, 5, 2]) if edu else rng.choice([0, 0, 1, 1, 2, 3])
        rows.append({"id": f"doc-{i}", "text": make_document(edu, rng), "score": score})
    return pd.DataFrame(rows)


@pytest.fixture(scope="session")
def corpus() -> pd.DataFrame:
    return make_corpus(1200, seed=7)


@pytest.fixture(scope="session")
def labelled_parquet(tmp_path_factory, corpus) -> Path:
    return write_parquet(corpus, tmp_path_factory.mktemp("labelled") / "labels.parquet")
