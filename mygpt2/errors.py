"""The exception types users see, and the exit code each one means.

Every problem is raised as a `MyGPT2Error` with a message that says what is wrong, where, and
what to do. The command line prints the message without a traceback and exits with the code
of its class (the shell convention: 2 for bad usage or input, 1 for a fault while working).
Anything else escaping is a bug in mygpt2.
"""


class MyGPT2Error(Exception):
    """A problem with the user's input (a file, a setting, a checkpoint): exit code 2."""

    exit_code = 2


class UsageError(MyGPT2Error):
    """A bad command line or config (an unknown flag, a wrong type): exit code 2."""


class RunError(MyGPT2Error):
    """A fault while working (disk full, an unwritable directory, a loss that became NaN):
    exit code 1. Whatever was saved before it is intact."""

    exit_code = 1
