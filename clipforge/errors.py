"""The errors a user can fix: bad input, a bad flag value, a refused file.

`clipforge` prints a UserError as one line, ``clipforge: error: MESSAGE``, and exits non-zero;
any other exception is a bug and keeps its traceback. Subclasses keep a second, built-in base
(ValueError, FileNotFoundError, RuntimeError) so that callers catching that still catch them.
"""


class UserError(Exception):
    """An error the user can fix (bad input, bad flag, refused file); printed as one line."""


class InputError(UserError, ValueError):
    """An input the stages cannot read: a missing or unreadable file, a malformed list, a bad value."""


class MissingInput(UserError, FileNotFoundError):
    """A file or directory named on the command line (or found empty) that is not there."""


class SystemRefusal(UserError, OSError):
    """The system refuses what the user asked for: a port in use, a directory that cannot be written."""
