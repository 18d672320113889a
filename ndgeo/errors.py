"""The one exception type for user errors (bad input, bad options, refused files)."""


class NdgeoError(Exception):
    """A problem the user can fix: the CLI prints it as one line and exits with code 2."""
