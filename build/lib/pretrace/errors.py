"""Errors that name the culprit and the fix, so users never have to read a torch traceback."""


class PretraceError(Exception):
    """Base class of every error pretrace raises on purpose."""


class InputError(PretraceError, ValueError):
    """A file, record, query or setting the user supplied is not usable as given."""


class NumericalError(PretraceError, ArithmeticError):
    """A gradient, covariance or score became non-finite."""


class ConcurrentChange(PretraceError, RuntimeError):
    """An artefact changed while a run read it: another run or project writes the same root."""


class NotReady(PretraceError, RuntimeError):
    """An artefact was asked for before the artefacts it is computed from are current."""


class InputErrors(InputError):
    """Several input problems found in one pass (`pretrace.project.preflight`), one line each."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))
