"""User-facing errors. Both are ValueErrors so callers can catch bad input in one place."""


class ImageInputError(ValueError):
    """The input is not an image we can use (unreadable, truncated, too small, too large)."""


class FaceNotFoundError(ValueError):
    """No face was detected in the image."""
