"""Errors a user can cause. The CLI prints them without a traceback and exits non-zero."""


class KitError(Exception):
    """Base class: the message says what is wrong and what to do. `settings`: for an error
    about a combination of settings, every dotted key (or table) in it: a sweep that varies
    another of them may still sample valid combinations (kit.sweep.check_space)."""

    exit_code = 2

    def __init__(self, *args, settings: tuple[str, ...] = ()):
        super().__init__(*args)
        self.settings = settings


class SpecError(KitError):
    """A competition spec is missing or malformed."""


class DataError(KitError):
    """A data file cannot be read or breaks the competition contract."""


class SubmissionError(KitError):
    """A submission folder/zip is malformed or its PredictionModel breaks the scorer contract."""
