"""The simulator's OAuth token book (single-use rotating refresh tokens), Calendly's per-user rate
windows, and the 403 rate-limit fault knob."""

from __future__ import annotations

import pytest

from apptsync.simulator._faults import FaultKnobs, FaultState, InjectedFault
from apptsync.simulator._oauth_tokens import SIMULATOR_CLIENT_ID, SIMULATOR_CLIENT_SECRET, OAuthError, OAuthTokenBook
from apptsync.simulator._rate_window import RateWindows

pytestmark = pytest.mark.unit

CLIENT = {"grant_type": "refresh_token", "client_id": SIMULATOR_CLIENT_ID, "client_secret": SIMULATOR_CLIENT_SECRET}


def test_a_refresh_token_is_single_use_and_rotates() -> None:
    book = OAuthTokenBook("calendly")
    first = book.issue(1)
    account, second = book.refresh({**CLIENT, "refresh_token": first.refresh_token})
    assert account == 1 and second != first and book.current(1) == second
    with pytest.raises(OAuthError) as reused:
        book.refresh({**CLIENT, "refresh_token": first.refresh_token})
    assert (reused.value.status, reused.value.error) == (400, "invalid_grant")
    assert (book.refreshes, book.invalid_grants) == (1, 1)


def test_access_tokens_authenticate_until_they_expire() -> None:
    book = OAuthTokenBook("google")
    pair = book.issue(7)
    assert book.account_of(pair.access_token) == 7 and book.account_of("forged") is None
    assert book.expire_access_tokens() == 1
    assert book.account_of(pair.access_token) is None


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({**CLIENT, "client_secret": "wrong"}, "invalid_client"),
    ],
)
def test_bad_token_requests(form: dict[str, str], error: str) -> None:
    book = OAuthTokenBook("x")
    pair = book.issue(1)
    with pytest.raises(OAuthError) as caught:
        book.refresh({**form, "refresh_token": pair.refresh_token})
    assert caught.value.error == error


def test_rate_windows_count_per_key_and_reset() -> None:
    windows = RateWindows()
    verdicts = [windows.admit("u1", now=10.0 + n * 0.1, limit=3, window_seconds=1.0) for n in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert [v.remaining for v in verdicts] == [2, 1, 0, 0]
    assert verdicts[3].headers() == {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1"}
    assert windows.admit("u2", now=10.3, limit=3, window_seconds=1.0).allowed  # another user
    assert windows.admit("u1", now=11.0, limit=3, window_seconds=1.0).remaining == 2  # a new window
    assert windows.rejected == 1
    assert windows.admit("u3", now=0.0, limit=5, window_seconds=60.0).reset_seconds == 60


def test_the_403_rate_limit_fault_comes_after_429s_and_before_5xx() -> None:
    faults = FaultState(FaultKnobs(fail_next_429=1, fail_next_403_rate_limit=1, fail_next_5xx=1))
    taken = [faults.take_next_fault() for _ in range(4)]
    assert taken == [InjectedFault.TOO_MANY_REQUESTS, InjectedFault.RATE_LIMIT_403, InjectedFault.SERVER_ERROR,
                     InjectedFault.NONE]  # fmt: skip
