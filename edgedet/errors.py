"""The errors a user can cause. The CLI turns each into one line and an exit code."""

from __future__ import annotations


class EdgedetError(Exception):
    """A problem with the user's input, files, devices or configuration."""

    exit_code = 2


class ConfigError(EdgedetError):
    """Invalid configuration: names the field path, e.g. ``sinks.http.port``."""


class SourceError(EdgedetError):
    """A source that cannot be opened or read."""

    exit_code = 3


class ModelError(EdgedetError):
    """A model file that is missing, corrupt, or not a detector we understand."""

    exit_code = 4


class AssetError(EdgedetError):
    """A registry model or asset that cannot be found, fetched or verified."""

    exit_code = 5


class SinkError(EdgedetError):
    """An output that cannot be opened (file not writable, bad URL, refused login)."""

    exit_code = 6
