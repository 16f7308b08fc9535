"""Alert notifications: routing, grouping, silences, durable delivery (docs/alerts.md)."""
