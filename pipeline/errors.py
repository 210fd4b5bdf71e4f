"""One exception type per stage family; the CLI prints them on one line and exits non-zero."""


class PipelineError(Exception):
    """An error a user can act on: the message names the file, row or config key."""


class ConfigError(PipelineError):
    """Invalid config: unknown key, wrong type, bad value."""


class DataError(PipelineError):
    """Unreadable or malformed input data (file, column, row)."""


class GenerateError(PipelineError):
    """Generation failed in a way retries cannot fix (wrong key, unknown model, ...)."""


class ClassifierError(PipelineError):
    """Annotation or classifier training/scoring cannot proceed."""


class FilterError(PipelineError):
    """The filter stage cannot proceed."""


class TrainError(PipelineError):
    """Training cannot start or continue."""


class EmptySourceError(TrainError):
    """A training source leaves nothing (or too little) to train on after its filters or parsing."""


class HubError(PipelineError):
    """Dataset card or Hub push failed."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a KeyError's key unquoted), else its type's name."""
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return (text.splitlines() or [type(e).__name__])[0]
