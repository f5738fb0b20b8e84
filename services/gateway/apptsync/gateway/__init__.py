"""apptsync gateway."""
