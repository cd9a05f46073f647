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
