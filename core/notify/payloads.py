"""What a notification says, in each receiver's format: generic JSON, Slack, Microsoft Teams, email.

A notification (as queued in the outbox) is ``{"status", "group_key", "receiver", "group_labels", "alerts": [...],
"truncated", "created_at", "id"}`` where each alert is ``{"key", "rule", "subject", "severity", "status",
"message", "started_at", "resolved_at"}``. Alert messages carry strings from the fleet (queue names, error texts):
they are cut to ``MAX_MESSAGE`` characters and escaped for the format that renders them (Slack's mrkdwn control
characters; e-mail headers lose line breaks). Bodies are bounded: alerts beyond what fits in ``max_body_bytes`` are
dropped and counted in ``truncated``.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

MAX_MESSAGE = 500
USER_AGENT = "fleetdeck-notifier"
_COLOR = {"critical": "attention", "warning": "warning", "info": "accent"}


def cut(text: str | None, limit: int = MAX_MESSAGE) -> str:
    value = text or ""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def iso(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"  # Alertmanager's "not ended"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def title(notification: dict[str, Any]) -> str:
    alerts = notification["alerts"]
    firing = [a for a in alerts if a["status"] == "firing"]
    rules = sorted({a["rule"] for a in alerts})
    state = f"FIRING:{len(firing) + notification.get('truncated', 0)}" if firing else "RESOLVED"
    return cut(f"[{state}] {', '.join(rules)}", 200)


def _line(alert: dict[str, Any]) -> str:
    mark = "resolved" if alert["status"] == "resolved" else alert["severity"]
    return f"[{mark}] {alert['rule']} {alert['subject']}: {alert['message'] or '(no message)'}"


# -- generic JSON (the Alertmanager webhook shape, so existing consumers read it) ---------------------------------


def generic(notification: dict[str, Any]) -> dict[str, Any]:
    alerts = notification["alerts"]
    common = {k: v for k, v in (("alertname", _common(alerts, "rule")), ("severity", _common(alerts, "severity")))
              if v is not None}
    return {
        "version": "4",
        "receiver": notification["receiver"],
        "status": notification["status"],
        "groupKey": notification["group_key"],
        "groupLabels": notification["group_labels"],
        "commonLabels": common,
        "commonAnnotations": {},
        "truncatedAlerts": notification.get("truncated", 0),
        "notificationId": notification["id"],
        "alerts": [
            {
                "status": a["status"],
                "labels": {"alertname": a["rule"], "subject": a["subject"], "severity": a["severity"]},
                "annotations": {"summary": a["message"]},
                "startsAt": iso(a["started_at"]),
                "endsAt": iso(a.get("resolved_at")),
                "fingerprint": a["key"],
            }
            for a in alerts
        ],
    }


def _common(alerts: list[dict[str, Any]], field: str) -> str | None:
    values = {a[field] for a in alerts}
    return values.pop() if len(values) == 1 else None


# -- Slack incoming webhook ---------------------------------------------------------------------------------------


def slack_escape(text: str) -> str:
    """Slack reads &, < and > as markup (links, mentions such as <!channel>); the rest is plain text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack(notification: dict[str, Any]) -> dict[str, Any]:
    head = slack_escape(title(notification))
    lines = [slack_escape(_line(a)) for a in notification["alerts"]]
    if notification.get("truncated"):
        lines.append(f"… and {notification['truncated']} more")
    body = "\n".join(f"• {line}" for line in lines)
    return {
        "text": f"{head}\n{body}",  # the fallback shown in notifications
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": cut(title(notification), 150)}},
            {"type": "section", "text": {"type": "mrkdwn", "text": cut(body, 2900)}},
        ],
    }


# -- Microsoft Teams (Workflows "post to a channel when a webhook request is received": an Adaptive Card) ----------


def teams(notification: dict[str, Any]) -> dict[str, Any]:
    firing = any(a["status"] == "firing" for a in notification["alerts"])
    worst = max((a["severity"] for a in notification["alerts"]), key=lambda s: ("info", "warning", "critical").index(s),
                default="info")
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": title(notification), "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": _COLOR.get(worst, "default") if firing else "good"},
    ]
    body += [{"type": "TextBlock", "text": _line(a), "wrap": True} for a in notification["alerts"]]
    if notification.get("truncated"):
        body.append({"type": "TextBlock", "text": f"… and {notification['truncated']} more", "isSubtle": True})
    return {
        "type": "message",
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": None,
            "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard",
                        "version": "1.4", "body": body},
        }],
    }


WEBHOOK_FORMATS = {"generic": generic, "slack": slack, "teams": teams}


def webhook_body(notification: dict[str, Any], fmt: str, max_bytes: int) -> bytes:
    """The JSON body in `fmt`, with alerts dropped from the end (and counted) until it fits in `max_bytes`."""
    shaped = dict(notification)
    alerts = list(notification["alerts"])
    while True:
        body = json.dumps(WEBHOOK_FORMATS[fmt](shaped), ensure_ascii=False).encode()
        if len(body) <= max_bytes or len(alerts) <= 1:
            return body[:max_bytes] if len(body) > max_bytes else body
        dropped = max(1, len(alerts) // 4)
        alerts = alerts[:-dropped]
        shaped = {**shaped, "alerts": alerts, "truncated": shaped.get("truncated", 0) + dropped}


# -- e-mail -------------------------------------------------------------------------------------------------------


def header_safe(text: str) -> str:
    return " ".join(text.split())  # no CR/LF: a message text cannot add headers


def email(notification: dict[str, Any], sender: str, to: list[str], max_bytes: int) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = header_safe(cut(title(notification), 200))
    message["From"] = header_safe(sender)
    message["To"] = ", ".join(header_safe(address) for address in to)
    # stable per notification: a mail system (or a person) can see a resend is the same message
    digest = hashlib.sha256(str(notification["id"]).encode()).hexdigest()[:32]
    message["Message-ID"] = f"<fleetdeck.{digest}@fleetdeck.invalid>"
    message["X-Fleetdeck-Notification-Id"] = header_safe(str(notification["id"]))[:300]
    lines = [_line(a) + f"\n    since {iso(a['started_at'])}" + (f", resolved {iso(a['resolved_at'])}"
                                                                     if a.get("resolved_at") else "")
             for a in notification["alerts"]]
    if notification.get("truncated"):
        lines.append(f"... and {notification['truncated']} more")
    text = "\n".join(lines) + f"\n\ngroup: {notification['group_key']}\n"
    message.set_content(text.encode()[:max_bytes].decode(errors="ignore"))
    return message
