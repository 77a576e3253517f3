"""The one error type users see for bad input."""


class ScResidualError(ValueError):
    """Bad input or state, with a one-line message naming the problem and the fix.

    The command line prints the message alone (no traceback); in Python it is a
    ``ValueError`` so generic handlers keep working.
    """
