"""Turn a generated student/teacher conversation into chat messages (what the SFT trainer consumes).

The ``conversation`` template asks for one turn per line, each starting with ``Student:`` or
``Teacher:``; models also write ``**Student:**`` or ``Student :``, which parse the same.
"""

from __future__ import annotations

import re

_SPEAKER = re.compile(r"^\s*[*_]{0,2}\s*(student|teacher)\s*[*_]{0,2}\s*:\s*[*_]{0,2}\s*", re.IGNORECASE | re.MULTILINE)
_ROLES = {"student": "user", "teacher": "assistant"}


def parse_conversation(text: str) -> list[dict[str, str]]:
    """``text`` -> ``[{"role": "user"|"assistant", "content": str}, ...]``; ``[]`` if not a conversation.

    Student turns become ``user``, Teacher turns ``assistant``. Text before the first speaker is
    dropped, consecutive turns of one speaker are merged, leading teacher turns and a trailing
    unanswered student turn are dropped, so the result alternates user/assistant, starts with
    ``user``, ends with ``assistant`` and has at least one exchange — or is empty.
    """
    marks = list(_SPEAKER.finditer(text))
    turns: list[dict[str, str]] = []
    ends = [m.start() for m in marks[1:]] + [len(text)] if marks else []
    for mark, end in zip(marks, ends, strict=True):
        content = text[mark.end(): end].strip()
        role = _ROLES[mark.group(1).lower()]
        if not content:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += "\n" + content
        else:
            turns.append({"role": role, "content": content})
    while turns and turns[0]["role"] != "user":
        turns.pop(0)
    if turns and turns[-1]["role"] != "assistant":
        turns.pop()
    return turns if len(turns) >= 2 else []
