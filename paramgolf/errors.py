"""The error type that separates a user's mistake from a bug in paramgolf.

`UserError`: bad input the user can fix; the CLIs print it in one line. Anything else (an
`assert`, a `RuntimeError`, any other exception) is a broken invariant, i.e. a bug in
paramgolf, and the CLIs let it through with its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input the user can fix (a config value, a file, data); its message names it and says what to do.

    The CLIs print it in one line, without a traceback. It subclasses ValueError, so
    `except ValueError` still catches it.
    """
