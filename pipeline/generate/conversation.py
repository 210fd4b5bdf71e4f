"""Conversations: built turn by turn by the request engine, or parsed from free text.

The ``conversation`` template's rows are built one request per turn (:class:`TurnByTurn`), so their
``messages`` column (``[{role, content}]``, roles ``user``/``assistant``) alternates by construction;
their ``text`` is the same conversation as ``Student:`` / ``Teacher:`` turns. For conversations a
user brings as free text, :func:`parse_conversation` reads one turn per line, each starting with
``Student:`` or ``Teacher:``; models also write ``**Student:**`` or ``Student :``, which parse the same.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.generate.config import GenerateConfig
from pipeline.rundir import CONVERSATION, TEMPLATE

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


# --- conversations built turn by turn (UltraChat / Magpie style) ------------------------------------

TURN_VARIABLES = ("history", "turn", "turns")
"""What a turn template sees besides the row's seeds: the conversation so far (``[{role, content}]``),
the number of the exchange being written (1-based) and how many the conversation has."""

STUDENT_TEMPLATE = "conversation_student"
"""``prompts/<name>.j2``: writes the student's (user's) next turn from the seeds, persona and history."""

_LEADING_LABEL = re.compile(r"\A\s*[*_]{0,2}\s*(student|teacher|user|assistant)\s*[*_]{0,2}\s*:\s*[*_]{0,2}\s*",
                            re.IGNORECASE)


@dataclass(frozen=True)
class TurnByTurn:
    """How the engine builds the rows of one template (``conversation``) as conversations, one request a turn.

    A conversation of ``turns`` exchanges costs ``2 * turns`` requests, alternating: a *user* turn,
    written by the model playing the student (``student``: the turn template, rendered with the
    row's seeds and the history; one user message), then an *assistant* turn, the teacher answering
    the conversation so far (the row's ``prompt``, the rendered ``conversation`` template, as the system
    message, then the history as user/assistant messages). Roles alternate by construction; a model
    that ignores a format cannot break them.
    """

    template: str
    turns: int
    student: Any  # pipeline.generate.render.Template

    @property
    def requests(self) -> int:
        return 2 * self.turns

    def applies(self, row: dict) -> bool:
        return row.get(TEMPLATE) == self.template

    @staticmethod
    def role(k: int) -> str:
        """Role of the ``k``-th generated message (0-based): user, assistant, user, ..."""
        return "user" if k % 2 == 0 else "assistant"

    def request(self, row: dict, history: list[dict[str, str]]) -> list[dict[str, str]]:
        """The request that writes the next message of ``history``."""
        if len(history) % 2 == 0:
            prompt = self.student.render({**row, "history": list(history), "turn": len(history) // 2 + 1,
                                          "turns": self.turns})
            return [{"role": "user", "content": prompt}]
        return [{"role": "system", "content": str(row["prompt"])}, *history]

    @staticmethod
    def clean(text: str) -> str:
        """A turn's text without a speaker label the model may have put in front of it."""
        return _LEADING_LABEL.sub("", text.strip(), count=1).strip()

    @staticmethod
    def render(messages: list[dict[str, str]]) -> str:
        """The row's ``text``: :func:`render_conversation`."""
        return render_conversation(messages)


def render_conversation(messages: list[dict[str, str]]) -> str:
    """The ``text`` form of a conversation: ``Student:`` / ``Teacher:`` turns that
    :func:`parse_conversation` reads back (the classifier, filters and diversity report see this)."""
    names = {"user": "Student", "assistant": "Teacher"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages if m["role"] in names)


def turn_by_turn(prompts_dir: Path, template: str, turns: int) -> TurnByTurn:
    """The :class:`TurnByTurn` of ``template``; the student turn template comes from ``prompts_dir``,
    else from the project's ``prompts/``."""
    from pipeline.generate.render import PROMPTS_DIR, load_template
    from pipeline.generate.sampler import SEED_VARIABLES

    path = Path(prompts_dir) / f"{STUDENT_TEMPLATE}.j2"
    if not path.is_file():
        path = PROMPTS_DIR / f"{STUDENT_TEMPLATE}.j2"
    return TurnByTurn(template, turns, load_template(path, [*SEED_VARIABLES, *TURN_VARIABLES]))


def conversation_turns(gen: GenerateConfig) -> TurnByTurn | None:
    """The run's :class:`TurnByTurn`, or None when the template mix has no ``conversation``."""
    from pipeline.generate.render import PROMPTS_DIR

    if CONVERSATION not in gen.templates:
        return None
    return turn_by_turn(Path(gen.prompts_dir) if gen.prompts_dir else PROMPTS_DIR, CONVERSATION,
                        gen.conversation.turns)


def conversation_lineage(gen: GenerateConfig) -> tuple[dict, dict[str, str]]:
    """What shapes turn-by-turn rows besides the row's own prompt: the settings and the turn template."""
    from pipeline.lineage import content_digest

    turns = conversation_turns(gen)
    assert turns is not None
    return gen.conversation.model_dump(), {
        f"prompts/{turns.student.path.name}": content_digest(turns.student.path)}
