"""The one error type users see for bad input."""


class ScResidualError(ValueError):
    """Bad input or state, with a one-line message naming the problem and the fix.

    The command line prints the message alone (no traceback); in Python it is a
    ``ValueError`` so generic handlers keep working.
    """


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of ``err``'s message, at most ``limit`` characters, for a one-line error.

    Library errors (qhull, h5py, transformers) often span many lines; the first names the cause.
    """
    line = (str(err).strip().splitlines() or ["no message"])[0]
    return line if len(line) <= limit else line[: limit - 3] + "..."
