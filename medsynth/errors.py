"""Errors a user can act on.

``MedsynthError`` is raised for anything caused by input (a bad file, an unknown class, a wrong
option); its message says what was wrong and what to do. The CLI prints it as one line and exits
non-zero; the app shows it in the UI. Anything else is a bug and keeps its traceback.
"""


class MedsynthError(Exception):
    """A problem with the user's input, explained in the message."""


class ImageLoadError(MedsynthError, ValueError):
    """A file that cannot be read as an image; the message names the file and the problem."""
