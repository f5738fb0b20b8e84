-- Two-phase OAuth refresh (fetcher/connection_state.py). The fetcher that is about to spend a
-- connection's single-use refresh token first commits its name and start time here; the token
-- request then runs outside any transaction, and its result is stored (clearing the marker) in a
-- short transaction of its own. Other fetchers wait for the marker instead of spending the token
-- again, and take it over only once it is older than the refresh timeout (its owner died).
ALTER TABLE connections
    ADD COLUMN refresh_owner      text,
    ADD COLUMN refresh_started_at timestamptz,
    ADD CONSTRAINT connections_refresh_marker_whole
        CHECK ((refresh_owner IS NULL) = (refresh_started_at IS NULL));
