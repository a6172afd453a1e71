"""The one error type of a batch job, shared by everything from model loading to writing the outputs.

It stands for a problem the user can fix (an unknown model, a manifest without a ``path`` column, an output
that would overwrite an input), so its message names what to change, often a command-line option. The
``gradcam`` command prints it as one line without a traceback and exits with status 2; every other exception
is a bug and keeps its traceback.
"""


class JobError(Exception):
    """A problem with the job that the user can fix, reported as one line without a traceback."""
