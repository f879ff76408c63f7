"""The campaign's emails: a recorded reminder rendered as a MIME message (plain text and HTML).

Everything the email says comes from the reminder's recorded event, so a message built
again after a crash is the same message: same ``Message-ID`` (derived from the reminder's
id), same ``Date`` (when the reminder was recorded), same ``X-Keyledger-Stage``. A mail
system that received the first copy can recognise the second as a duplicate.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from functools import cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from service.domain.campaign import FINAL
from service.domain.expiry import EXPIRY_NOTICE
from service.domain.leaks import LEAK_NOTICE
from service.webhooks.domain import WEBHOOK_NOTICE

TEMPLATES = Path(__file__).parent / "templates"


@cache
def _templates() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                       undefined=StrictUndefined, keep_trailing_newline=True)


def utc_text(value: datetime | str | None) -> str:
    """``2018-01-01 00:00 UTC``: how the emails write a time."""
    if value is None:
        return "never"
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def duration_text(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def message_id(reminder_id: str, mail_from: str) -> str:
    domain = mail_from.rpartition("@")[2].strip("<> ") or "keyledger.invalid"
    return f"<reminder-{reminder_id}@{domain}>"


def subject(reminder: dict) -> str:
    count = len(reminder["apps"])
    apps = f"{count} app{'' if count == 1 else 's'}"
    sunset = utc_text(reminder["sunset_at"])
    if reminder["stage"] == FINAL:
        return f"Access tokens stopped working on {sunset}: switch {apps} to API keys"
    return f"Action needed: access tokens stop working on {sunset} ({apps} still {'uses' if count == 1 else 'use'} them)"


def compose(reminder: dict, *, mail_from: str, lookback: timedelta) -> EmailMessage:
    """The email of one recorded reminder (see ``CampaignUseCases.reminder``)."""
    if reminder["stage"] == LEAK_NOTICE:
        return compose_leak_notice(reminder, mail_from=mail_from)
    if reminder["stage"] == EXPIRY_NOTICE:
        return compose_expiry_notice(reminder, mail_from=mail_from)
    if reminder["stage"] == WEBHOOK_NOTICE:
        return compose_webhook_notice(reminder, mail_from=mail_from)
    context = {
        "owner_name": reminder["owner_name"], "owner_email": reminder["owner_email"],
        "stage": reminder["stage"], "final": reminder["stage"] == FINAL,
        "sunset": utc_text(reminder["sunset_at"]), "lookback": duration_text(lookback),
        "subject": subject(reminder),
        "apps": [{**app, "last_used": utc_text(app["last_used_at"])} for app in reminder["apps"]],
    }
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = formataddr((reminder["owner_name"], reminder["owner_email"]))
    message["Subject"] = context["subject"]
    message["Date"] = format_datetime(reminder["recorded_at"].astimezone(UTC))
    message["Message-ID"] = message_id(reminder["id"], mail_from)
    message["X-Keyledger-Stage"] = reminder["stage"]
    message["X-Keyledger-Sunset"] = reminder["sunset_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_templates().get_template("reminder.txt").render(context))
    message.add_alternative(_templates().get_template("reminder.html").render(context), subtype="html")
    return message


def compose_leak_notice(reminder: dict, *, mail_from: str) -> EmailMessage:
    """The owner's email about a key found in public (``service.application.leaks``)."""
    leak = reminder["apps"][0]
    context = {"owner_name": reminder["owner_name"], "owner_email": reminder["owner_email"], **leak,
               "found_at": utc_text(reminder["recorded_at"])}
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = formataddr((reminder["owner_name"], reminder["owner_email"]))
    done = "revoked" if leak["action"] == "revoked" else "reported (still active)"
    message["Subject"] = f"Your API key {leak['display']} of {leak['app_name']} was found in public: {done}"
    message["Date"] = format_datetime(reminder["recorded_at"].astimezone(UTC))
    message["Message-ID"] = message_id(reminder["id"], mail_from)
    message["X-Keyledger-Stage"] = LEAK_NOTICE
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_templates().get_template("leak.txt").render(context))
    return message


def compose_expiry_notice(reminder: dict, *, mail_from: str) -> EmailMessage:
    """An owner's mail of the day about keys that expire soon (``service.application.expiry``):
    each key's description, hint, app and expiry time, never a secret."""
    keys = [{**key, "expires": utc_text(key["expires_at"]), "last_used": utc_text(key.get("last_used_at"))}
            for key in reminder["apps"]]
    context = {"owner_name": reminder["owner_name"], "owner_email": reminder["owner_email"], "keys": keys}
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = formataddr((reminder["owner_name"], reminder["owner_email"]))
    count = len(keys)
    first = keys[0]
    message["Subject"] = (f"Your API key {first['display']} of {first['app_name']} expires on {first['expires']}"
                          if count == 1 else f"{count} of your API keys expire soon, the first on {first['expires']}")
    message["Date"] = format_datetime(reminder["recorded_at"].astimezone(UTC))
    message["Message-ID"] = message_id(reminder["id"], mail_from)
    message["X-Keyledger-Stage"] = EXPIRY_NOTICE
    message["X-Keyledger-Keys"] = ", ".join(f"{key['key_id']}:{key['stage']}" for key in keys)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_templates().get_template("expiry.txt").render(context))
    return message


def compose_webhook_notice(reminder: dict, *, mail_from: str) -> EmailMessage:
    """The registrant's email about a webhook endpoint disabled after failing for days
    (``service.webhooks``): which endpoint, why, how to turn it on again. Never its secret."""
    endpoint = reminder["apps"][0]
    message = EmailMessage()
    message["From"] = mail_from
    message["To"] = formataddr((reminder["owner_name"], reminder["owner_email"]))
    message["Subject"] = f"Your webhook endpoint {endpoint['url'][:80]} was disabled"
    message["Date"] = format_datetime(reminder["recorded_at"].astimezone(UTC))
    message["Message-ID"] = message_id(reminder["id"], mail_from)
    message["X-Keyledger-Stage"] = WEBHOOK_NOTICE
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(_templates().get_template("webhook-disabled.txt").render(
        {**endpoint, "owner_name": reminder["owner_name"], "owner_email": reminder["owner_email"],
         "disabled_at": utc_text(reminder["recorded_at"])}))
    return message
