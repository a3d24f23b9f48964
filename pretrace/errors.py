"""Errors that name the culprit and the fix, so users never have to read a torch traceback."""

import errno


class PretraceError(Exception):
    """Base class of every error pretrace raises on purpose."""


class InputError(PretraceError, ValueError):
    """A file, record, query or setting the user supplied is not usable as given."""


class NumericalError(PretraceError, ArithmeticError):
    """A gradient, covariance or score became non-finite."""


class ConcurrentChange(PretraceError, RuntimeError):
    """An artefact changed while a run read it: another run or project writes the same root."""


class RunInProgress(PretraceError, RuntimeError):
    """Another `pretrace run` on this machine is computing the same storage root."""


class NotReady(PretraceError, RuntimeError):
    """An artefact was asked for before the artefacts it is computed from are current."""


class InputErrors(InputError):
    """Several input problems found in one pass (`pretrace.project.preflight`), one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class StorageFull(PretraceError, OSError):
    """The storage root's disk (or quota) is full: one line, no retry, nothing half-written."""


def no_space_left(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk or quota is full. Writers in Rust (safetensors) and C++
    (Arrow) report it in their message only, with the OS's words or its error number."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(sign in text for sign in ("No space left on device", "Disk quota exceeded", "os error 28"))
