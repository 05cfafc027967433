"""The command line's own error: printed as one line, exit status 2."""

from flowsde import InputError


class CLIError(InputError):
    """Bad command-line input: the message says what is wrong and how to fix it."""
