"""The base of errors meant for users: the CLI prints their one-line message, no traceback."""


class UserError(RuntimeError):
    """Something the user can fix (bad input, missing weights, a diverged run)."""


class TrainingError(UserError):
    """Training cannot go on (diverged, or mismatched data and checkpoint); one line."""
