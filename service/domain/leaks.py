"""The leak policy: what happens to a live credential found in public.

A key is revoked at once (``revoke``, the default) or only reported (``report``); an app's
owner may override the deployment's policy for the app. A personal token found in public is
always revoked: it manages keys.
"""

from __future__ import annotations

POLICIES = ("revoke", "report")
REVOKE = "revoke"


def action_for_key(deployment_policy: str, app_policy: str | None) -> str:
    """``revoked`` or ``reported``: the app's policy if it set one, else the deployment's."""
    policy = app_policy if app_policy in POLICIES else deployment_policy
    return "revoked" if policy == REVOKE else "reported"


# The owner's email about a leak goes through the campaign's outbox (service.domain.campaign's
# Reminder: recorded, delivered once, retried while SMTP is down, in the audit trail) as a
# reminder of this stage; its ``sunset_at`` and ``due_at`` are the report's time.
LEAK_NOTICE = "leak"
