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
        _app["app"] = create_app()
    app = _app["app"]
    with app.request_context(request.environ):
        return app.full_dispatch_request()
