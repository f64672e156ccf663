"""The one exception the command turns into a one-line message and exit code 2."""


class TranspileError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""
