"""The web console at ``/console``: server-rendered pages for owners and the security team.

A plain Flask blueprint (not a flask-smorest one: it is not part of the API document) served by
the API's own Flask app, so the same process, the same request ids, logs and metrics. Its views
call the same use cases and query objects as the API's (``system.keys_app``, ``directory``,
``audit``, ``legacy_usage``, ``campaign``) and nothing deeper: the rules live there, once.

* ``web`` — the request frame: the blueprint, the cookie session, sign-in, CSRF, security
  headers (a strict Content-Security-Policy: no inline script or style) and error pages.
* ``owners`` — apps and their keys: create, change scopes, roll, revoke, history.
* ``limits`` — the rate-limit forms of a key and of an app.
* ``security`` — the audit trail, integrity, "who could do S on A at T", the campaign.
* ``webhooks`` — webhook endpoints, their secret shown once, the delivery log, send again, replay.
* ``chart`` — the campaign's chart, drawn on the server as SVG.
"""

from __future__ import annotations

from flask import Flask

from service.composition import System


def register(flask_app: Flask, system: System) -> None:
    from service.console import leaks, limits, owners, security, web, webhooks  # noqa: F401 (their routes join the blueprint)

    web.configure(flask_app, system)
    flask_app.register_blueprint(web.bp)
