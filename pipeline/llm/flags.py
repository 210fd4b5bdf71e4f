"""Quality flags on a completion (truncated, empty, refusal-like, repetitive) and what a run's flags
say about its settings. Pure: text in, flags and one-line warnings out."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import pandas as pd

from filters.heuristics import GopherRepetition
from pipeline.rundir import TEXT

# Openings of a refusal, not mentions: "I cannot stress enough" in a lesson is not a refusal,
# so only the first sentence is checked.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry, (but )?i|i can(no|')t (help|assist|provide|write|create|comply)|"
    r"i cannot (help|assist|provide|write|create|comply)|i'?m (not able|unable) to|i am (not able|unable) to|"
    r"as an ai( language model)?[, ]|i must decline|i won'?t be able to)",
    re.IGNORECASE,
)
_REPETITION = GopherRepetition()


def completion_flags(text: str, finish_reason: str | None) -> list[str]:
    """Flags of one completion: ``truncated`` (hit max_tokens), ``empty``, ``refusal``, ``repetitive``."""
    flags = []
    if finish_reason == "length":
        flags.append("truncated")
    if not text.strip():
        flags.append("empty")
    elif _REFUSAL.match(text.strip()[:200]):
        flags.append("refusal")
    if text.strip() and is_repetitive(text):
        flags.append("repetitive")
    return flags


def is_repetitive(text: str) -> bool:
    """True when the text fails Gopher's repetition rules (a model looping on a line or phrase)."""
    keep, _ = _REPETITION.keep(_REPETITION.score(pd.DataFrame({TEXT: [text]})))
    return not bool(keep.iloc[0])


def cut_and_looping(flags: Sequence[Sequence[str] | None]) -> tuple[int, int]:
    """Rows cut at max_tokens, and rows that loop (stopped in a loop or looping to the end; a looping
    row is counted there, not as cut, since a longer limit would not have ended it)."""
    sets = [set(f) if f is not None else set() for f in flags]
    looping = sum("repetitive" in f for f in sets)
    return sum("truncated" in f and "repetitive" not in f for f in sets), looping


def flagged_warning(flags: Sequence[Sequence[str] | None], max_tokens: int, max_share: float) -> str | None:
    """One line when rows cut off or looping pass ``max_share`` of the run, saying what to change."""
    cut, looping = cut_and_looping(flags)
    if not flags or (cut + looping) / len(flags) <= max_share:
        return None
    said = []
    if cut:
        said.append(f"{cut} hit generate.max_tokens={max_tokens} (flag 'truncated': raise it, or ask for shorter texts)")
    if looping:
        said.append(f"{looping} loop on a line or phrase (flag 'repetitive': try a higher generate.temperature or "
                    "generate.repetition_penalty, or a larger model)")
    return (f"{cut + looping} of {len(flags)} rows are flagged, over generate.max_flagged_share={max_share:.0%}: "
            f"{'; '.join(said)}. Training and the published SFT set leave flagged rows out")


def greedy_warning(prompts: Sequence[str], texts: Sequence[str], temperature: float) -> str | None:
    """One line when a server ignored the temperature: every repeated prompt got one identical answer."""
    if temperature <= 0:
        return None
    answers: dict[str, set[str]] = {}
    for prompt, text in zip(prompts, texts, strict=True):
        answers.setdefault(prompt, set()).add(text)
    repeated = [p for p, n in Counter(prompts).items() if n > 1]
    if len(repeated) < 2 or any(len(answers[p]) > 1 for p in repeated):
        return None
    return (f"all {len(repeated)} repeated prompts came back with identical completions at "
            f"generate.temperature={temperature}: the server decodes greedily (transformers serve does for a "
            "model whose generation_config.json lacks \"do_sample\": true; add it and restart the server)")
