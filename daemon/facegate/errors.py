"""User-facing errors.

Every error a user can cause (bad file, bad config key, wrong checksum, dead camera) is a ``FacegateError``
subclass whose message names the thing and says what to do. The CLI prints it as ``facegate: error: …`` without
a traceback and exits with ``exit_code``.
"""

from __future__ import annotations


class FacegateError(Exception):
    """Base class of errors caused by input, configuration or environment (not by a bug).

    ``exit_code`` follows DESIGN.md: 1 runtime failure, 2 usage/config error.
    """

    exit_code: int = 1


class UsageError(FacegateError):
    """Wrong command-line usage or a bad config key/value."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration file that cannot be read or does not validate; the message carries the key path."""


class FalseAcceptGoalError(ConfigError):
    """A ``decision.false_accept_rate`` that the pack's calibration cannot vouch for with the gallery it has."""


class ImageError(FacegateError):
    """An image that is missing, unreadable, corrupt or unsupported."""


class VideoError(FacegateError):
    """A video file or camera URL that cannot be opened or read."""


class ModelError(FacegateError):
    """A model file that is missing, corrupt, truncated, has the wrong checksum or does not match its manifest."""


class ChecksumError(ModelError):
    """A file whose sha256 differs from the one its manifest records."""


class NoFaceError(FacegateError):
    """An image in which a face was required but none was found."""


class GalleryError(FacegateError):
    """A gallery operation that cannot be done (unknown identity, corrupt store, quality gate refused)."""


class BrokerError(FacegateError):
    """The MQTT broker cannot be reached or refused the connection."""
