"""apptsync fetcher."""
