"""The Filter contract: every filter names its stage and declares every reason `keep` can give."""

from __future__ import annotations

import fnmatch
import importlib
import pkgutil

import pandas as pd
import pytest

import filters
from filters.base import Filter
from tests.filters.corpus import SPAM, documents


def concrete_filters() -> list[type[Filter]]:
    for m in pkgutil.iter_modules(filters.__path__):
        importlib.import_module(f"filters.{m.name}")
    found, todo = [], list(Filter.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if "name" in vars(cls):
            found.append(cls)
    return sorted(found, key=lambda c: c.name)


@pytest.mark.parametrize("cls", concrete_filters(), ids=lambda c: c.__name__)
def test_a_filter_declares_its_stage_and_reasons_under_its_name(cls: type[Filter]) -> None:
    assert isinstance(cls.stage, str) and cls.stage
    assert cls.reasons and all(r.startswith(f"{cls.name}:") for r in cls.reasons), cls.reasons


@pytest.mark.parametrize("cls", [c for c in concrete_filters() if c.__name__ not in ("EduScore", "Decontaminate")],
                         ids=lambda c: c.__name__)
def test_every_reason_a_filter_gives_is_declared(cls: type[Filter]) -> None:
    f = cls()
    texts = [*documents(5, seed=2), "", "x", SPAM, "lorem ipsum {", "- a\n- b\n- c", "word " * 400, "a...\n" * 30]
    scores = f.score(pd.DataFrame({"text": texts}))
    given = {r for r in f.keep(scores)[1] if r}
    assert given, "the probe texts should trip at least one rule"
    for reason in given:
        assert any(fnmatch.fnmatchcase(reason, pattern) for pattern in cls.reasons), reason
