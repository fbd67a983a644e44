"""Exceptions the command line maps to exit codes: user errors exit 2, the rest exit 1."""


class MmcurateError(Exception):
    """Base class for errors mmcurate reports without a traceback."""

    exit_code = 1


class ConfigError(MmcurateError):
    """The configuration or a command-line value is wrong; the message names the key."""

    exit_code = 2


class InputError(MmcurateError):
    """An input file is missing, unreadable or lacks a column; the message names it."""

    exit_code = 2


class TeacherError(MmcurateError):
    """Too many teacher requests failed (`synthesis.max_failed_fraction`): the run is written and a
    rerun asks the failed ones again."""


class LedgerError(MmcurateError):
    """The ledger does not account for every input row: the run is not trustworthy."""


class ModelError(ConfigError):
    """A model or its weights cannot be found, fetched or loaded; `key` is the config key to change."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message

    def __reduce__(self):  # raised on a worker, it comes back to the driver as itself
        return type(self), (self.key, self.message)
