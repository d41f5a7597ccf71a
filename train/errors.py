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


class StageError(MediaError):
    """A pipeline stage failed with an unexpected exception (the original is its ``__cause__``)."""
    exit_code = 1

    def __init__(self, stage: str, error: BaseException):
        self.stage, self.error = stage, error
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        super().__init__(f"stage {stage} failed: {type(error).__name__}" + (f": {detail}" if detail else ""))


class MissingExtraError(SegpipeError, ImportError):
    """An optional extra is not installed; the message says which ``pip install 'segpipe[...]'``."""


class QueueOverflowError(SegpipeError, RuntimeError):
    """A queue with the ``fault`` policy was full."""
    exit_code = 1


class ClusterUnavailableError(SegpipeError, ConnectionError):
    """No Ray cluster answers at the address given."""
    exit_code = 1


class TerminatedError(SegpipeError):
    """The process got SIGTERM; the output so far was closed properly."""
    exit_code = 143


class SourceStalledError(PartialInputError):
    """The source gave no frame for ``decode.stall_timeout_s``: what decoded before was processed."""


class UnreadableInputError(InvalidInputError, MediaError):
    """An input file exists but holds no video that can be read (empty, text, an MP4 cut before its index,
    no decodable frame): a bad input (exit 2), and a media error for callers that catch those."""
    exit_code = 2


def plural(count: int, noun: str) -> str:
    """``1 frame``, ``2 frames``: a count in a message."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
