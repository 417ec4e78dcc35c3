"""The one exception type users see.

Every problem caused by the user's input (a config key, a file, a setting) is raised as
`MyGPT2Error` with a message that says what is wrong, where, and what to do. The command
line prints these messages without a traceback; anything else is a bug in mygpt2.
"""


class MyGPT2Error(Exception):
    """A problem with the user's input, explained in words; shown without a traceback."""


class UsageError(MyGPT2Error):
    """A bad command line or config (an unknown flag, a wrong type): exit code 2."""
