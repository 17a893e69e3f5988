"""Errors a user can cause. The CLI prints ``str(error)`` as one line, without a traceback."""


class KontrastError(Exception):
    """Base class: a mistake in the user's input (file, name, value), with the fix in the message."""


class UnknownModelError(KontrastError, KeyError):
    """A model or pretrained tag that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class CheckpointError(KontrastError):
    """A checkpoint that cannot be read or does not fit the model."""


class ImageError(KontrastError):
    """An image file that cannot be opened or decoded."""


class OfflineError(KontrastError):
    """A download was needed but the hub cannot be reached."""


class ConfigError(CheckpointError):
    """A config key or value that kontrast does not implement (or cannot write): loading or exporting it would
    silently give another model, so it is refused with the key, the value and the file."""


class MissingTowerError(KontrastError, AttributeError):
    """A one-tower model (e.g. a Hugging Face ``CLIPTextModelWithProjection``) asked for its other tower. It is an
    ``AttributeError`` too, so ``hasattr`` / ``getattr(model, name, default)`` keep working on such models."""
