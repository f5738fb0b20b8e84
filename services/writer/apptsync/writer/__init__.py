"""apptsync writer."""
