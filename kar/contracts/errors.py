"""Errors every stage raises for problems a user can fix; the CLI prints them as one line, no traceback.

One class per failure a caller may want to handle differently (as Feast's ``errors.py``): a scheduler retries
``EndpointDown`` later, fixes its key on ``EndpointRejected``, alerts on ``QualityGateFailed``. Every class
derives from ``KarError``, so ``except KarError`` still catches them all.
"""


class KarError(Exception):
    """Base class: a problem in the user's input, data or environment, with a message that says what to do."""


class DataError(KarError):
    """Input data cannot be used: names the file, line and field where possible."""


class QualityGateFailed(DataError):
    """A data-quality expectation failed on a whole batch; the message names the suite, the expectation, what
    was observed and what was kept."""


class EnvironmentProblem(KarError):
    """The machine lacks something a stage needs (Java, a service, a model)."""


class ModelUnavailable(EnvironmentProblem):
    """A model (the encoder) could not be loaded where the job runs; what was written before is kept."""


class EndpointDown(KarError):
    """The LLM server kept failing past the retry and circuit-breaker budget; the job stops, keeping its answers,
    and a rerun resumes."""


class EndpointRejected(KarError):
    """The LLM server refuses the job itself (bad key, unknown model, wrong URL): retrying cannot help."""


def error_class(name: str) -> type[KarError]:
    """The class named ``name`` here (``KarError`` for any other name): Spark tasks report a failure as the
    class name and message, and the driver raises it again as that class."""
    found = globals().get(name)
    return found if isinstance(found, type) and issubclass(found, KarError) else KarError
