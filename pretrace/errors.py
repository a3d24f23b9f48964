"""Errors that name the culprit and the fix, so users never have to read a torch traceback."""


class PretraceError(Exception):
    """Base class of every error pretrace raises on purpose."""


class InputError(PretraceError, ValueError):
    """A file, record, query or setting the user supplied is not usable as given."""


class NumericalError(PretraceError, ArithmeticError):
    """A gradient, covariance or score became non-finite."""
