"""The experiment layer's error for bad configs (its own module: the registry and the
config schema both raise it)."""


class ConfigError(ValueError):
    """A config field is missing, unknown, mistyped or has a value that is not allowed."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")
