"""Delivery of one notification: an HTTP POST to a webhook, or one e-mail over SMTP. Bounded in time and size.

Each send returns a short detail line (``HTTP 200``, ``250 OK``) or raises :class:`DeliveryError`, whose
``permanent`` flag says a retry cannot help (an HTTP 4xx other than 408/429: the receiver rejects the message).
Redirects are not followed (a webhook URL is configured exactly); at most ``MAX_RESPONSE_BYTES`` of a response
are read, and never past the attempt's deadline.
"""

from __future__ import annotations

import smtplib
import time
from typing import Any

import httpx

from core.config_alerts import EmailReceiver, WebhookReceiver
from core.notify import payloads

MAX_RESPONSE_BYTES = 4096


class DeliveryError(Exception):
    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def send_webhook(receiver: WebhookReceiver, notification: dict[str, Any], timeout_s: float,
                 max_body_bytes: int) -> str:
    body = payloads.webhook_body(notification, receiver.format, max_body_bytes)
    headers = {
        **receiver.headers,
        "Content-Type": "application/json",
        "User-Agent": payloads.USER_AGENT,
        # the same id on every retry: a receiver can drop a duplicate (at-least-once delivery, docs/alerts.md)
        "X-Fleetdeck-Notification-Id": payloads.header_safe(str(notification["id"]))[:300],
    }
    deadline = time.monotonic() + timeout_s
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout_s), follow_redirects=False, trust_env=False) as client, \
                client.stream("POST", receiver.url, content=body, headers=headers) as response:
            received = 0
            for chunk in response.iter_bytes():
                received += len(chunk)
                if received >= MAX_RESPONSE_BYTES or time.monotonic() > deadline:
                    break
            status = response.status_code
    except httpx.HTTPError as error:
        # a webhook URL is often the secret itself (Slack, Teams): keep it out of the attempt record and logs
        raise DeliveryError(f"{type(error).__name__}: {error}".replace(receiver.url, "<webhook url>")[:300]) from None
    if 200 <= status < 300:
        return f"HTTP {status}"
    raise DeliveryError(f"HTTP {status}", permanent=400 <= status < 500 and status not in (408, 429))


def send_email(receiver: EmailReceiver, notification: dict[str, Any], timeout_s: float, max_body_bytes: int) -> str:
    message = payloads.email(notification, receiver.sender, receiver.to, max_body_bytes)
    try:
        with smtplib.SMTP(receiver.smtp_host, receiver.smtp_port, timeout=timeout_s) as smtp:
            if receiver.starttls:
                smtp.starttls()
            if receiver.username:
                smtp.login(receiver.username, receiver.password or "")
            refused = smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as error:
        raise DeliveryError(f"every recipient refused: {sorted(error.recipients)}", permanent=True) from None
    except (smtplib.SMTPException, OSError) as error:
        raise DeliveryError(f"{type(error).__name__}: {error}"[:300]) from None
    if refused:
        return f"sent; refused by {len(refused)} recipient(s): {', '.join(sorted(refused))[:200]}"
    return f"sent to {len(receiver.to)} recipient(s)"
