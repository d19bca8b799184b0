"""Errors a user may see. Each message is short, plain and says what to change."""


class EaselError(Exception):
    """Base for every error whose message is meant for the user as-is."""


class InvalidRequest(EaselError):
    """A generation request breaks one or more rules; `problems` lists each one."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class UnknownSampler(EaselError):
    pass


class ModelNotFound(EaselError):
    pass


class ModelLoadError(EaselError):
    pass


class EmbeddingError(EaselError):
    pass


class PromptError(EaselError):
    pass


class Canceled(EaselError):
    """Raised inside a running generation when its cancel token is set."""

    def __init__(self, message: str = "canceled"):
        super().__init__(message)


class ImageError(EaselError):
    """An uploaded file is not an image we read, or is too large to open."""
