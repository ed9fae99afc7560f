"""The security review console: find, replay and verify sessions in the browser, decide approvals.

    python -m jitgate.review --port 8790         (started by `jitgate up`)
    functions/review/main.py                      (the same app as a Cloud Function, infra/review.tf)

Layout:
    auth.py          sign-in (OIDC code flow + PKCE, or IAP's signed header) and who may see what
    sessions.py      the index and recordings, read-only: lists, search, one session's timeline
    verification.py  the one place that judges a recording (chain, signature)
    decisions.py     the one place that applies an approve/deny
    audit.py         every look at a recording, written once to the review audit trail
    app.py           the Flask app: pages, CSRF, Content-Security-Policy
Pages are server-rendered (Jinja2, autoescaped); the only script is the vendored
asciinema-player (static/vendor/asciinema-player, Apache-2.0) and a few lines to start it.
"""
