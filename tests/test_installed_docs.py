"""The demo's offline web text: documentation every installation carries."""

from __future__ import annotations

import pytest

from pipeline.installed_docs import MIN_CHARS, installed_docs


@pytest.mark.slow
def test_the_installed_documentation_is_a_mixed_corpus_with_duplicates_and_the_same_every_time():
    docs = installed_docs()
    assert docs["id"].is_unique and len(docs) > 500
    assert (docs["text"].str.len() >= MIN_CHARS).all()
    kinds = docs["id"].str.split("/").str[0].value_counts()
    assert set(kinds.index) == {"python-docs", "readme", "license", "stdlib"}
    assert kinds.min() >= 20
    licenses = docs[docs["id"].str.startswith("license/")]["text"].str.strip()
    assert licenses.duplicated().sum() >= 5  # the same license text in several packages: work for dedup
    # any prefix mixes the kinds (the demo reads the first filter.limit documents)
    assert docs["id"].head(100).str.split("/").str[0].nunique() == 4
    again = installed_docs()
    assert again.equals(docs)
