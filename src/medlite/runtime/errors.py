"""The runtime seam's two errors (standard library only: the edge runner imports them)."""

from __future__ import annotations

from medlite.errors import UsageError


class ArtifactError(UsageError):
    """A fault the user can fix (missing file, unloadable model, no preprocessing): one line, exit 2.

    A UsageError, so every CLI reports it the same way; callers that only deal with deployed files
    catch it by this name.
    """


class RuntimeMissing(ArtifactError):
    """The runtime library for this format is not installed; the message carries the install hint."""
