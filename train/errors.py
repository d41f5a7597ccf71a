"""One error family for segpipe.

Every user-facing failure is a ``SegpipeError``; subclasses also inherit the matching
builtin so callers can catch ``FileNotFoundError`` or ``ValueError`` as usual. The CLI
prints ``str(error)`` as one line and exits with ``error.exit_code``.
"""


class SegpipeError(Exception):
    exit_code = 2


class InputNotFoundError(SegpipeError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class InvalidInputError(SegpipeError, ValueError):
    """An input exists but cannot be used as given."""


class DatasetError(InvalidInputError):
    """A dataset folder is missing parts or holds unreadable pairs."""


class CheckpointError(SegpipeError, ValueError):
    """A checkpoint is missing, corrupt, unsafe or of the wrong architecture."""


class BackendUnavailableError(SegpipeError, RuntimeError):
    """The requested inference backend cannot run on this machine."""


class MediaError(SegpipeError, RuntimeError):
    """A video source or sink failed."""
    exit_code = 1


class PartialInputError(MediaError):
    """The input ended early: what decoded was processed, the rest is missing."""
    exit_code = 3


class ExportError(SegpipeError, RuntimeError):
    """An exported model failed its check against PyTorch."""
    exit_code = 1
