"""The `train` section: tokenizer, model, phases and their mixtures."""

from __future__ import annotations

from pipeline.settings import Section


class TrainConfig(Section):
    pass
