"""Errors a user can cause. The CLI prints the message as one line and exits with status 2."""


class MuselabError(Exception):
    """Base class: the message says what is wrong and what to do about it."""


class ConfigError(MuselabError):
    """Unknown key, bad value, unknown recipe or preset."""


class DataError(MuselabError):
    """Missing, empty, unreadable or malformed data."""


class CheckpointError(MuselabError):
    """Missing, corrupt or unsafe run directory or weights file."""


class RunExistsError(MuselabError):
    """The output directory already holds a run."""


class ControlError(MuselabError):
    """A generation control is out of range or does not apply."""


class TrainingDiverged(MuselabError):
    """Training produced non-finite losses too many times in a row."""


class OutputExistsError(MuselabError):
    """A generated file would overwrite an existing one."""
