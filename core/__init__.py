"""Shared foundations of fleetdeck: configuration, the sample type and the time-series store."""
