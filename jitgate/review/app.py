"""The review console as a Flask app (WSGI): locally under werkzeug, in production as a Cloud Function.

Web manners, enforced here for every response:
- a strict Content-Security-Policy: scripts and styles from this origin only (no inline code);
  'wasm-unsafe-eval' because asciinema-player renders with a WebAssembly terminal;
- every POST carries the session's CSRF token (hidden field) and, when the browser sends one,
  an Origin equal to ours; sign-in state is bound to the browser by state, nonce and PKCE;
- the session cookie is signed, HttpOnly, SameSite=Lax (Secure on https) and expires with the ID token;
- no recording content in a URL: statement search is a POST; URLs carry ids and filters only;
- no-store caching, no framing, no referrer to other sites.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
import urllib.parse
from pathlib import Path

from flask import Flask, Response, abort, g, redirect, render_template, request, session, url_for

from jitgate import approvals as ap
from jitgate.backends import open_backends
from jitgate.logs import log
from jitgate.policy import PolicyHolder
from jitgate.review import decisions, sessions
from jitgate.review.audit import AuditTrail
from jitgate.review.auth import IAP_HEADER, IAP_JWKS_URL, IapVerifier, OidcLogin, SignInError, access_for, approver_of
from jitgate.review.verification import verification_of
from jitgate.settings import Settings

logger = logging.getLogger("jitgate.review")
HERE = Path(__file__).parent
SESSION_HOURS = 8
MAX_FORM = 64 * 1024
CSP = ("default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")


def _cookie_secret(settings: Settings) -> bytes:
    configured = settings.env.get("JITGATE_REVIEW_SECRET", "")
    if configured:
        return configured.encode()
    path = settings.keys_dir / "review-cookie.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


class Review:
    """What the pages need: settings, backends, policy, sign-in, the audit trail."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.backends = open_backends(settings)
        self.policy = PolicyHolder(settings.policy_path)
        self.audit = AuditTrail(settings)
        self.mode = settings.env.get("JITGATE_REVIEW_AUTH", "oidc").strip().lower()
        if self.mode not in ("oidc", "iap"):
            raise ValueError(f"JITGATE_REVIEW_AUTH={self.mode!r}: choose 'oidc' or 'iap'")
        self.iap = (IapVerifier(settings.env.get("JITGATE_REVIEW_IAP_AUDIENCE", ""),
                                settings.env.get("JITGATE_REVIEW_IAP_JWKS_URL") or IAP_JWKS_URL)
                    if self.mode == "iap" else None)
        self._login: tuple[str, OidcLogin] | None = None

    def login(self) -> OidcLogin:
        identity = self.policy.policy.identity
        issuer = self.settings.env.get("JITGATE_REVIEW_OIDC_ISSUER") or identity.issuer
        identity = identity.model_copy(update={"issuer": issuer})
        key = identity.model_dump_json()
        if self._login is None or self._login[0] != key:
            self._login = (key, OidcLogin(identity, self.settings.env.get("JITGATE_REVIEW_CLIENT_ID", "jitgate-review"),
                                          self.settings.env.get("JITGATE_REVIEW_CLIENT_SECRET", "")))
        return self._login[1]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    review = Review(settings)
    app = Flask("jitgate.review", template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.secret_key = _cookie_secret(settings)
    public_url = settings.env.get("JITGATE_REVIEW_PUBLIC_URL", "").rstrip("/")
    app.config.update(
        SESSION_COOKIE_NAME="jitgate_review",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=public_url.startswith("https://"),
        PERMANENT_SESSION_LIFETIME=SESSION_HOURS * 3600,
        MAX_CONTENT_LENGTH=MAX_FORM,
        SEND_FILE_MAX_AGE_DEFAULT=3600,
    )
    app.jinja_env.globals.update(fmt_time=sessions.fmt_time, describe=ap.describe_decision)
    app.extensions["jitgate_review"] = review

    # -- every request: who is it, and may they be here ------------------------------------

    def current_viewer() -> dict | None:
        if review.mode == "iap":
            try:
                email, subject = review.iap.verify(request.headers.get(IAP_HEADER))
            except SignInError as exc:
                g.sign_in_problem = str(exc)
                return None
            groups = ap.known_groups(review.backends.approvals, email)
            return {"email": email, "groups": sorted(groups), "via": "iap", "sub": subject}
        viewer = session.get("viewer")
        if not viewer or viewer.get("exp", 0) <= time.time():
            return None
        return viewer

    @app.before_request
    def _gate():
        g.csp_nonce = ""
        if request.endpoint in ("static", "healthz", "login", "callback", "signed_out"):
            return None
        viewer = current_viewer()
        if viewer is None:
            if review.mode == "iap":
                return render_template("refused.html", viewer=None, why=getattr(g, "sign_in_problem", "not signed in")), 401
            return redirect(url_for("login", next=_local_path(request.full_path)))
        g.viewer = viewer
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        if request.method == "POST":
            origin = request.headers.get("Origin")
            if origin and origin != request.host_url.rstrip("/") and origin != public_url:
                abort(403, "cross-origin request refused")
            sent = request.form.get("csrf", "")
            if not sent or not hmac.compare_digest(sent, session["csrf"]):
                abort(403, "the form is stale or forged (CSRF token mismatch); reload the page and try again")
        g.access = access_for(review.policy.policy, viewer["email"], frozenset(viewer["groups"]))
        if not g.access.any and request.endpoint != "logout":
            log(logger, logging.WARNING, "review console refused", who=viewer["email"], groups=viewer["groups"])
            return render_template("refused.html", viewer=viewer,
                                   why="you are neither in the policy's review groups nor an approver of any target"), 403
        return None

    @app.after_request
    def _headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"  # no-referrer would make Chromium send Origin: null
        response.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(400)
    @app.errorhandler(413)
    def _error(exc):
        return render_template("error.html", viewer=g.get("viewer"), code=exc.code, message=exc.description), exc.code

    @app.context_processor
    def _context():
        return {"viewer": g.get("viewer"), "access": g.get("access"), "csrf": session.get("csrf", ""),
                "mode": review.mode}

    def need_reviewer():
        if not g.access.reviewer:
            abort(403, "recordings are for the review groups of the policy; approvers see approvals only")

    # -- sign-in -------------------------------------------------------------------------------

    @app.get("/healthz")
    def healthz():
        return {"ok": True}

    @app.get("/auth/login")
    def login():
        if review.mode == "iap":
            return redirect(url_for("home"))
        redirect_uri = (public_url or request.host_url.rstrip("/")) + url_for("callback")
        try:
            url, pending = review.login().start(redirect_uri, _local_path(request.args.get("next", "/")))
        except SignInError as exc:
            return render_template("error.html", viewer=None, code=503, message=str(exc)), 503
        session.clear()
        session["pending"] = pending.to_dict()
        return redirect(url)

    @app.get("/auth/callback")
    def callback():
        from jitgate.review.auth import PendingLogin

        data = session.pop("pending", None)
        if not data:
            return render_template("error.html", viewer=None, code=400,
                                   message="no sign-in is in progress in this browser; start again from the console"), 400
        try:
            principal, id_token = review.login().finish(PendingLogin(**data), request.args.to_dict())
        except SignInError as exc:
            log(logger, logging.WARNING, "review sign-in failed", error=str(exc))
            return render_template("error.html", viewer=None, code=401, message=str(exc)), 401
        session.clear()
        session.permanent = True
        session["viewer"] = {"email": principal.username.lower(), "groups": sorted(principal.groups), "via": "oidc",
                             "exp": min(principal.expires_at, int(time.time()) + SESSION_HOURS * 3600)}
        session["csrf"] = secrets.token_urlsafe(32)
        session["id_token"] = id_token
        try:  # the groups this person proved, for their Slack clicks (as the CLI and the old console did)
            ap.remember_principal(review.backends.approvals, principal.username, principal.groups)
        except Exception:  # noqa: BLE001 - a convenience only
            pass
        log(logger, logging.INFO, "review sign-in", who=principal.username, groups=sorted(principal.groups))
        return redirect(data.get("next") or "/")

    @app.post("/auth/logout")
    def logout():
        session.clear()
        return redirect(url_for("signed_out"))

    @app.get("/auth/signed-out")
    def signed_out():
        return render_template("error.html", viewer=None, code=200, message="You are signed out."), 200

    # -- pages -----------------------------------------------------------------------------------

    @app.get("/")
    def home():
        return redirect(url_for("session_list") if g.access.reviewer else url_for("approval_list"))

    @app.get("/sessions")
    def session_list():
        need_reviewer()
        filters = sessions.Filters.from_args(request.args)
        rows, more = sessions.list_sessions(review.backends, filters)
        return render_template("sessions.html", rows=rows, filters=filters, more=more, search=None, search_text="",
                               prev_url=_page_url(filters, filters.page - 1) if filters.page > 1 else None,
                               next_url=_page_url(filters, filters.page + 1) if more else None)

    @app.post("/search")
    def search():
        need_reviewer()
        text = request.form.get("text", "").strip()
        filters = sessions.Filters.from_args(request.form)
        if not text:
            filters.problems.append("search: type some statement or command text to look for")
            search_result = None
        else:
            since, until = filters.window()
            search_result = sessions.search_statements(review.backends, text[:500], since, until)
            review.audit.record(g.viewer["email"], "search", "", text=text[:500], since=filters.since, until=filters.until,
                                hits=len(search_result.hits))
        rows, more = sessions.list_sessions(review.backends, filters)
        return render_template("sessions.html", rows=rows, filters=filters, more=more, search=search_result,
                               search_text=text, prev_url=None,
                               next_url=_page_url(filters, filters.page + 1) if more else None)

    @app.get("/sessions/<session_id>")
    def session_page(session_id: str):
        need_reviewer()
        view = _load(session_id)
        verification = verification_of(review.backends, session_id)
        earlier = review.audit.views(session_id, limit=20)
        review.audit.record(g.viewer["email"], "view", session_id, verified=verification.ok)
        return render_template("session.html", view=view, entry=view.entry, verification=verification, earlier=earlier)

    @app.get("/sessions/<session_id>/terminal/<int:channel>.cast")
    def terminal(session_id: str, channel: int):
        need_reviewer()
        view = _load(session_id)
        try:
            cast = sessions.terminal_cast(view, channel)
        except LookupError as exc:
            abort(404, str(exc))
        review.audit.record(g.viewer["email"], "play", session_id, channel=channel)
        return Response(cast, mimetype="application/x-asciicast")

    @app.get("/sessions/<session_id>/download/<any('recording.jsonl', 'manifest.json'):name>")
    def download(session_id: str, name: str):
        need_reviewer()
        recording, manifest = _recording(session_id)
        review.audit.record(g.viewer["email"], "download", session_id, object=name)
        body = recording if name == "recording.jsonl" else manifest
        return Response(body, mimetype="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{session_id}-{name}"'})

    @app.get("/approvals")
    def approval_list():
        store = review.backends.approvals
        approver = approver_of(g.viewer["email"], g.viewer["groups"])
        now = time.time()

        def visible(record: dict) -> bool:
            if not ap.is_request(record):
                return False
            return g.access.reviewer or _approver_of_record(record, approver)

        pending = [dict(r, eligible=ap.eligibility(r, approver) is None and now < r["expires_at"])
                   for r in store.list_approvals(status=ap.PENDING, limit=200) if visible(r)]
        decided = [r for r in store.list_approvals(limit=300) if visible(r) and r["status"] != ap.PENDING][:50]
        return render_template("approvals.html", pending=pending, decided=decided, message=request.args.get("done", ""),
                               now=now)

    @app.post("/approvals/<approval_id>/decide")
    def decide(approval_id: str):
        action = request.form.get("action", "")
        reason = request.form.get("reason", "").strip()[:500]
        if action not in ("approve", "deny"):
            abort(400, "choose Approve or Deny")
        if action == "deny" and not reason:
            abort(400, "a denial needs a reason (the requester sees it)")
        approver = approver_of(g.viewer["email"], g.viewer["groups"])
        try:
            record = decisions.apply(review.backends, approval_id, approver, action, reason,
                                     token=session.get("id_token", ""))
        except ap.DecisionError as exc:
            code = 404 if exc.code == "not_found" else 409
            return render_template("error.html", code=code, message=f"{approval_id}: not applied: {exc}"), code
        log(logger, logging.INFO, "review console decision", approval_id=approval_id, who=approver.email, action=action,
            status=record["status"])
        outcome = ("approval recorded" if record["status"] == ap.PENDING else ap.describe_decision(record))
        return redirect(url_for("approval_list", done=f"{approval_id}: {outcome}"), code=303)

    # -- helpers -----------------------------------------------------------------------------------

    def _recording(session_id: str) -> tuple[bytes, bytes]:
        try:
            return sessions.load_recording(review.backends, session_id)
        except sessions.NotFound as exc:
            abort(404, str(exc))

    def _load(session_id: str) -> sessions.SessionView:
        try:
            return sessions.load_session(review.backends, session_id)
        except sessions.NotFound as exc:
            abort(404, str(exc))

    return app


def _approver_of_record(record: dict, approver: ap.Approver) -> bool:
    return (approver.email in record.get("approver_users", [])
            or bool(approver.groups.intersection(record.get("approver_groups", []))))


def _local_path(path: str) -> str:
    """Only a path on this site may be the place to return to after sign-in (no open redirect)."""
    path = (path or "/").rstrip("?")
    parts = urllib.parse.urlsplit(path)
    if parts.scheme or parts.netloc or not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def _page_url(filters: sessions.Filters, page: int) -> str:
    return url_for("session_list", **filters.query(page))
