"""Google Calendar's pager: every configured calendar in turn, full or incremental, as a pure state
object (no I/O; the session loads and saves the sync state it names).

A calendar's stored sync state is a `nextSyncToken` and the window its rows are known to be current
for. Per calendar the listing is one or more *passes*:

- no usable state: one full pass over the job window (`timeMin`/`timeMax`);
- a state whose window overlaps the job window: an incremental pass (`syncToken`, no time bounds:
  Google refuses them together) that brings every change since the token, then a bounded full pass
  over each part of the job window the state does not cover (a rolling CronJob window adds a day at
  its end: that day is listed in full, the rest incrementally).

Only `nextPageToken` says more pages follow (a page may be empty mid-listing). The sync token of the
first pass becomes *pending* once every pass is done and is stored only when the session is asked
for the next page, that is after the runner has handed every page of the listing to Kafka, so a job
that fails earlier never skips records by a token stored too soon. A 410 (`fullSyncRequired`) on the
incremental pass drops the token and lists the whole job window in full instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from apptsync.fetcher.providers._model import JobWindow, JsonValue
from apptsync.fetcher.providers._page_tokens import PageTokenTrail
from apptsync.shared.errors import InvalidArgumentError, PaginationLoopError

CURSOR_VERSION = 1
SYNC_STATE_VERSION = 1
MAX_RESULTS = 2500  # Google's largest `maxResults`


def sync_state_key(calendar_id: str) -> str:
    """The ConnectionStateStore key of one calendar's sync state."""
    return f"google_calendar/sync/{calendar_id}"


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_aware(text: JsonValue) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


@dataclass(frozen=True, slots=True)
class SyncState:
    """A calendar's `nextSyncToken` and the window whose rows were current when it was issued."""

    sync_token: str
    window_start: datetime
    window_end: datetime

    def overlaps(self, window: JobWindow) -> bool:
        return self.window_start < window.end and window.start < self.window_end

    def uncovered(self, window: JobWindow) -> list[tuple[datetime, datetime]]:
        """The parts of `window` outside this state's window (at most one before, one after)."""
        gaps = []
        if window.start < self.window_start:
            gaps.append((window.start, min(window.end, self.window_start)))
        if self.window_end < window.end:
            gaps.append((max(window.start, self.window_end), window.end))
        return gaps

    def to_json(self) -> JsonValue:
        return {
            "v": SYNC_STATE_VERSION,
            "sync_token": self.sync_token,
            "window_start": self.window_start.isoformat(),
            "window_end": self.window_end.isoformat(),
        }

    @classmethod
    def from_json(cls, value: JsonValue | None) -> SyncState | None:
        """None for anything that is not a readable state of this version (then: a full sync)."""
        if not isinstance(value, dict) or value.get("v") != SYNC_STATE_VERSION:
            return None
        token = value.get("sync_token")
        start, end = _parse_aware(value.get("window_start")), _parse_aware(value.get("window_end"))
        if not isinstance(token, str) or not token or start is None or end is None or end <= start:
            return None
        return cls(token, start, end)


@dataclass(frozen=True, slots=True)
class ListingPass:
    """One listing of a calendar: incremental from `sync_token`, or full over [time_min, time_max)."""

    sync_token: str | None
    time_min: datetime
    time_max: datetime

    def to_json(self) -> JsonValue:
        return [self.sync_token, self.time_min.isoformat(), self.time_max.isoformat()]

    @classmethod
    def from_json(cls, value: JsonValue) -> ListingPass:
        """Raises InvalidArgumentError."""
        if isinstance(value, list) and len(value) == 3 and (value[0] is None or isinstance(value[0], str)):
            start, end = _parse_aware(value[1]), _parse_aware(value[2])
            if start is not None and end is not None:
                return cls(value[0] or None, start, end)
        raise InvalidArgumentError("cursor", "unreadable google_calendar listing pass")


@dataclass(frozen=True, slots=True)
class GoogleRequest:
    """One `GET /calendars/{calendar_id}/events` query (incremental when `sync_token` is set)."""

    calendar_id: str
    page_token: str | None
    sync_token: str | None
    max_results: int
    time_min: str
    time_max: str

    def query_params(self) -> dict[str, str]:
        # showDeleted=true on every pass: a full listing then returns cancelled events (as cancelled,
        # rather than leaving them out, which would leave their rows scheduled), and with a syncToken
        # Google always includes deletions and does not allow showDeleted=false; its other parameters
        # must match the full listing that issued the token. singleEvents=true lists the instances of
        # recurring events, so a cancelled instance comes as itself, under its own id.
        params = {"singleEvents": "true", "showDeleted": "true", "maxResults": str(self.max_results)}
        if self.sync_token is not None:
            params["syncToken"] = self.sync_token
        else:
            # timeMin bounds an event's end, timeMax its start (both exclusive).
            params["timeMin"], params["timeMax"] = self.time_min, self.time_max
        if self.page_token is not None:
            params["pageToken"] = self.page_token
        return params


@dataclass(frozen=True, slots=True)
class PendingSync:
    calendar_id: str
    state: SyncState


class GoogleListing:
    """Which request comes next across the connection's calendars, and what state to store when.

    Protocol per step: `pending_sync()` (store it, then `sync_stored()`); `calendar_to_start()` (load
    its state, then `start_calendar(stored)`); `next_request()`; `accept(...)` or `full_sync_required()`.
    Raises InvalidArgumentError for no calendars, a page size below 1 or an unreadable cursor;
    `accept` raises PaginationLoopError on a repeated page token."""

    def __init__(
        self, *, calendar_ids: Sequence[str], window: JobWindow, page_size: int, cursor: JsonValue | None
    ) -> None:
        if not calendar_ids:
            raise InvalidArgumentError("settings", "a google_calendar connection needs at least one calendar id")
        if page_size < 1:
            raise InvalidArgumentError("page_size", "must be at least 1")
        self._calendars = list(calendar_ids)
        self._window = window
        self._max_results = min(MAX_RESULTS, page_size)
        self._index = 0
        self._passes: list[ListingPass] = []  # empty: the current calendar has not started
        self._pass = 0
        self._page_token: str | None = None
        self._token_to_store: str | None = None
        self._pending: PendingSync | None = None
        self._trail = PageTokenTrail("google events")
        if cursor is not None:
            self._restore(cursor)

    def cursor(self) -> JsonValue:
        return {
            "v": CURSOR_VERSION,
            "calendar": self._index,
            "passes": [p.to_json() for p in self._passes],
            "pass": self._pass,
            "page_token": self._page_token,
            "token_to_store": self._token_to_store,
            "pending": None
            if self._pending is None
            else {"calendar_id": self._pending.calendar_id, "state": self._pending.state.to_json()},
        }

    @property
    def incremental(self) -> bool:
        """Whether the current pass lists changes by sync token."""
        return bool(self._passes) and self._passes[self._pass].sync_token is not None

    def pending_sync(self) -> PendingSync | None:
        """A finished listing's sync state, to be stored before anything else happens."""
        return self._pending

    def sync_stored(self) -> None:
        self._pending = None

    def calendar_to_start(self) -> str | None:
        """The calendar whose stored sync state must be loaded before its first request."""
        if self._pending is not None or self._passes or self._index >= len(self._calendars):
            return None
        return self._calendars[self._index]

    def start_calendar(self, stored: JsonValue | None) -> None:
        """Plans the calendar's passes from its stored sync state (see the module docstring)."""
        state = SyncState.from_json(stored)
        if state is not None and state.overlaps(self._window):
            gaps = [ListingPass(None, start, end) for start, end in state.uncovered(self._window)]
            self._passes = [ListingPass(state.sync_token, self._window.start, self._window.end), *gaps]
        else:
            self._passes = [ListingPass(None, self._window.start, self._window.end)]
        self._begin_pass(0)

    def next_request(self) -> GoogleRequest | None:
        """None once every calendar was listed (and nothing is pending)."""
        if self._pending is not None or self._index >= len(self._calendars):
            return None
        if not self._passes:
            raise ValueError("start_calendar() must come first")
        listing_pass = self._passes[self._pass]
        return GoogleRequest(
            calendar_id=self._calendars[self._index],
            page_token=self._page_token,
            sync_token=listing_pass.sync_token,
            max_results=self._max_results,
            time_min=rfc3339(listing_pass.time_min),
            time_max=rfc3339(listing_pass.time_max),
        )

    def accept(self, request: GoogleRequest, *, next_page_token: str | None, next_sync_token: str | None) -> None:
        """Takes the paging fields of the answer to `request`. Without `nextPageToken` the pass is
        done; after the calendar's last pass, the first pass's `nextSyncToken` becomes pending and
        the next calendar follows."""
        if request != self.next_request():
            raise ValueError("accept() takes the answer to the current next_request()")
        if next_page_token:
            if next_page_token == request.page_token:
                raise PaginationLoopError(
                    f"pagination loop: google calendar {request.calendar_id!r} returned the same page token"
                )
            self._trail.follow(next_page_token)
            self._page_token = next_page_token
            return
        if self._pass == 0:
            # Later passes only fill gaps; the first pass's token continues from where this job is.
            self._token_to_store = next_sync_token or None
        if self._pass + 1 < len(self._passes):
            self._begin_pass(self._pass + 1)
            return
        if self._token_to_store:
            # The new token vouches for this job's window only: an incremental listing also reports
            # changes outside it, and those were skipped as out of window, not stored.
            state = SyncState(self._token_to_store, self._window.start, self._window.end)
            self._pending = PendingSync(request.calendar_id, state)
        self._index += 1
        self._passes = []
        self._begin_pass(0)

    def full_sync_required(self, request: GoogleRequest) -> str:
        """Google answered 410 to an incremental `request`: list the job window in full instead.
        Returns the calendar whose stored sync state must be dropped."""
        if request != self.next_request() or request.sync_token is None:
            raise ValueError("full_sync_required() takes the current incremental request")
        self._passes = [ListingPass(None, self._window.start, self._window.end)]
        self._begin_pass(0)
        return request.calendar_id

    def _begin_pass(self, number: int) -> None:
        self._pass = number
        self._page_token = None
        if number == 0:
            self._token_to_store = None
        self._trail.restart()

    def _restore(self, cursor: JsonValue) -> None:
        if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
            raise InvalidArgumentError("cursor", "not a google_calendar cursor of version 1")
        index, passes, number = cursor.get("calendar"), cursor.get("passes"), cursor.get("pass")
        page_token, token_to_store = cursor.get("page_token"), cursor.get("token_to_store")
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index <= len(self._calendars)
            or not isinstance(passes, list)
            or not isinstance(number, int)
            or isinstance(number, bool)
            or not (0 <= number < len(passes) or number == 0 == len(passes))
            or not (page_token is None or isinstance(page_token, str))
            or not (token_to_store is None or isinstance(token_to_store, str))
        ):
            raise InvalidArgumentError("cursor", "unreadable google_calendar cursor")
        self._index = index
        self._passes = [ListingPass.from_json(p) for p in passes]
        self._pass = number
        self._page_token, self._token_to_store = page_token or None, token_to_store or None
        if self._page_token is not None:
            self._trail.follow(self._page_token)
        pending = cursor.get("pending")
        if isinstance(pending, dict):
            calendar_id, state = pending.get("calendar_id"), SyncState.from_json(pending.get("state"))
            if isinstance(calendar_id, str) and state is not None:
                self._pending = PendingSync(calendar_id, state)
