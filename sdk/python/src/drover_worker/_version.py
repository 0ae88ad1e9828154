"""The SDK version, reported to the registry in ``v1.register`` (``sdk.version``)."""

__version__ = "0.1.0"
