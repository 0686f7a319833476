"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""


class KitError(Exception):
    """Base class: the message says what is wrong and what to do."""

    exit_code = 2


class SpecError(KitError):
    """A competition spec is missing or malformed."""


class DataError(KitError):
    """A data file cannot be read or breaks the competition contract."""


class SubmissionError(KitError):
    """A submission folder/zip is malformed or its PredictionModel breaks the scorer contract."""
