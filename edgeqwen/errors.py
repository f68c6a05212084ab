"""Errors the CLI reports as one clear line (no traceback), each with its own exit code."""


class EdgeQwenError(Exception):
    """Base class: a user-facing problem with the input, not a bug."""

    exit_code = 2


class ProfileError(EdgeQwenError):
    """A target profile is unknown or malformed."""


class CheckpointError(EdgeQwenError):
    """A checkpoint is missing, incomplete, corrupt or of an unsupported architecture."""


class ArtifactError(EdgeQwenError):
    """An artifact is missing, half-written, tampered with or of an unknown format version."""


class ValidationFailed(EdgeQwenError):
    """The built graph does not match the reference within the profile's bounds."""

    exit_code = 3


class ProviderUnavailable(EdgeQwenError, RuntimeError):
    """An execution provider was asked for by name but this onnxruntime build lacks it."""


class ContextOverflow(EdgeQwenError):
    """Prompt plus requested output would pass the model's context length."""


class QuantisationFailed(EdgeQwenError):
    """A quantisation pass cannot go on with this checkpoint and these options (e.g. a GPTQ Hessian with no
    Cholesky factor at any damping)."""
