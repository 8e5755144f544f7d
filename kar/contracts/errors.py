"""Errors every stage raises for problems a user can fix; the CLI prints them as one line, no traceback."""


class KarError(Exception):
    """Base class: a problem in the user's input, data or environment, with a message that says what to do."""


class DataError(KarError):
    """Input data cannot be used: names the file, line and field where possible."""


class EnvironmentProblem(KarError):
    """The machine lacks something a stage needs (Java, a service, a model)."""
