"""The one exception type for mistakes a user can fix.

Stages raise `UserError` with one line saying what is wrong and what to do;
the CLI prints it without a traceback and exits non-zero.
"""


class UserError(Exception):
    """Bad input: a wrong path, a malformed file, an option out of range."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (a library's cause inside our one-line errors)."""
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


INTERRUPT_ENV = "RLHF_LENS_INTERRUPT_AFTER"
"""Tests of resume set it to `stage:N`: the stage stops after N units of work, as if killed (Ctrl-C)."""


def interrupt_point(stage: str, units_done: int) -> None:
    """Raise KeyboardInterrupt when $RLHF_LENS_INTERRUPT_AFTER names this stage and count."""
    import os

    target = os.environ.get(INTERRUPT_ENV, "")
    if target and target == f"{stage}:{units_done}":
        raise KeyboardInterrupt(f"{INTERRUPT_ENV}={target}")
