"""Exceptions that nestbench raises for bad input and failed runs.

The CLI turns every ``NestbenchError`` into a one-line message and exit code 2, so a
message must name the offending value and the fix.
"""


class NestbenchError(Exception):
    """Base class for errors caused by user input or the environment, not by a bug."""

    exit_code = 2


class ConfigError(NestbenchError):
    """A recipe, ``--set`` override or command-line value is invalid."""


class UnknownNameError(NestbenchError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0] if self.args else ""


class AssetNotFoundError(NestbenchError):
    """An offline asset package or one of its files is missing."""


class ModelLoadError(NestbenchError):
    """A model path, file or hub id cannot be loaded."""


class PromptSetError(NestbenchError):
    """A prompt set or prompt file is invalid, empty, or overlaps the evaluation set."""


class NoSafetyNeuronsError(NestbenchError):
    """Probe-based selection found no safety neuron, so NeST would train nothing."""


class UnsupportedModelError(NestbenchError):
    """The model lacks the structure a method needs (for NeST: gated FFN projections)."""


class TrainingDivergedError(NestbenchError):
    """The training loss became NaN or infinite; ``loss_curve`` contains the steps before it."""

    def __init__(self, message: str, step: int, loss_curve: list[dict[str, float]] | None = None):
        super().__init__(message)
        self.step = step
        self.loss_curve = list(loss_curve or [])


class RecordWriteError(NestbenchError):
    """A run record, generations file or other result file could not be written (disk full, no permission)."""


class ResumeError(NestbenchError):
    """A run cannot be resumed: unknown run id, or its model or data changed since it started."""


class MethodsFailedError(NestbenchError):
    """One or more methods of a run failed; their records hold the tracebacks."""


class NestbenchWarning(UserWarning):
    """Warning category for conditions a user may choose to filter."""
