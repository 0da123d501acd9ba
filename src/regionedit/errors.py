"""Typed errors. User-input errors subclass ``ValueError`` so callers can catch either."""


class RegionEditError(Exception):
    """Base class of every error regionedit raises on purpose."""


class InvalidInputError(RegionEditError, ValueError):
    """A user-supplied value is wrong; the message names it and says how to fix it."""


class InvalidMaskError(InvalidInputError):
    """A mask is unreadable, of the wrong size, or empty."""


class ImageSizeError(InvalidInputError):
    """An image's size does not fit the model (not a multiple of the VAE factor, too large)."""


class PromptCountError(InvalidInputError):
    """The numbers of masks and prompts differ."""


class InvalidOptionError(InvalidInputError):
    """An editor option is out of range."""


def require_bools(options, names) -> None:
    """Refuse options dataclass fields ``names`` that are not True or False."""
    for name in names:
        if not isinstance(getattr(options, name), bool):
            raise InvalidOptionError(f"{name} must be true or false, got {getattr(options, name)!r}")


class ModelLoadError(RegionEditError):
    """A model could not be found or loaded."""


class OutputExistsError(InvalidInputError):
    """An output file exists and overwriting was not asked for."""


class NonFiniteError(RegionEditError):
    """The networks produced NaN or inf (usually half precision overflowing)."""


class DependencyError(RegionEditError):
    """An optional dependency is missing; the message names the extra to install."""
