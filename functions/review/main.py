"""Cloud Function (HTTP): the security review console (jitgate.review), deployed by infra/review.tf.

Sign-in is the app's own (OIDC code flow + PKCE) or IAP's signed header (JITGATE_REVIEW_AUTH=iap).
Its account reads the recordings bucket and the index, and writes only the review audit bucket.
"""
import functions_framework

from jitgate import logs
from jitgate.review.app import create_app

logs.setup()  # JSON lines on stderr: Cloud Logging's structured format (the review audit lines too)

_app = {}


@functions_framework.http
def review(request):
    if "app" not in _app:
        app = create_app()
        app.config["SESSION_COOKIE_SECURE"] = True  # functions are served over HTTPS only
        _app["app"] = app
    app = _app["app"]
    # Google's front end terminates TLS: the app sees http; its own URLs (the sign-in
    # redirect URI, the Origin it accepts) are https.
    request.environ["wsgi.url_scheme"] = "https"
    with app.request_context(request.environ):
        return app.full_dispatch_request()
