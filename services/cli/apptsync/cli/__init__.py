"""apptsync cli."""
