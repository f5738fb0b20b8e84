"""Loop detection for providers that page with opaque tokens (Calendly, Google Calendar)."""

from __future__ import annotations

from apptsync.shared.errors import PaginationLoopError


class PageTokenTrail:
    """The page tokens one listing followed. `follow(token)` raises PaginationLoopError when the
    provider hands back a token this listing already followed (paging would never end)."""

    def __init__(self, listing: str) -> None:
        self._listing = listing
        self._seen: set[str] = set()

    def follow(self, token: str) -> None:
        if token in self._seen:
            raise PaginationLoopError(f"pagination loop: {self._listing} returned page token {token[:40]!r} twice")
        self._seen.add(token)

    def restart(self) -> None:
        self._seen.clear()
