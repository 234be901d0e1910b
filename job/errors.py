"""The one exception type that means "the user handed us something wrong".

Anything raised as `BadInput` reaches the user as a single line on stderr and exit code 2
(see cli.main). Every other exception is a fault: it keeps its traceback and exits 1.
"""


class BadInput(Exception):
    """Bad config, URI, file or credentials. The message says what and how to fix it."""

    exit_code = 2
