"""`jitgate approvals list|show|approve|deny`: decide approvals without Slack.

The approver proves who they are with an OIDC token (verified against policy.identity,
so the groups are the IdP's), e.g.

    jitgate approvals approve apr_1234 --token "$(jitgate login --dev --user dana@example.com --groups dba)"

Decisions are sent to the approvals service (jitgate.approvals_client), which checks and signs
them, as it does for Slack clicks and the web console.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time


def _fmt(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _open(args):
    from jitgate.backends import open_backends
    from jitgate.cli import _settings

    settings = _settings(args)
    return settings, open_backends(settings)


def cmd_list(args) -> int:
    from jitgate import approvals as ap

    _, backends = _open(args)
    status = None if args.all else (args.status or ap.PENDING)
    if args.limit < 1 or args.page < 1:
        print("--limit and --page must be 1 or more", file=sys.stderr)
        return 2
    # Explicit pages, newest first: one more row than asked tells whether another page exists.
    page = backends.approvals.list_approvals(status=status, target=args.target, limit=args.limit + 1,
                                             offset=(args.page - 1) * args.limit)
    more = len(page) > args.limit
    rows = [r for r in page[:args.limit] if ap.is_request(r)]
    now = time.time()
    if args.json:
        print(json.dumps({"page": args.page, "limit": args.limit, "more": more, "requests": rows}, indent=2))
        return 0
    if not rows and not more:
        print(f"no {status or ''} approval requests".replace("  ", " ") + (f" on page {args.page}" if args.page > 1 else ""))
        return 0
    print(f"{'ID':20}  {'STATUS':9}  {'REQUESTER':24}  {'TARGET':12}  {'CLASSES':16}  {'EXPIRES (UTC)':19}  STATEMENT")
    for r in rows:
        status_text = ap.EXPIRED if r["status"] == ap.PENDING and now >= r["expires_at"] else r["status"]
        stmt = " ".join(r["statement"].split())
        print(f"{r['approval_id']:20}  {status_text:9}  {r['requester'][:24]:24}  {r['target'][:12]:12}  "
              f"{','.join(r['classes'])[:16]:16}  {_fmt(r['expires_at']):19}  {stmt[:60]}{'…' if len(stmt) > 60 else ''}")
    first = (args.page - 1) * args.limit + 1
    print(f"page {args.page}: requests {first}-{first + len(page[:args.limit]) - 1}"
          + (f"; more on the next page: --page {args.page + 1}" if more else "; no more"))
    return 0


def cmd_show(args) -> int:
    _, backends = _open(args)
    record = backends.approvals.get_approval(args.id)
    if record is None:
        print(f"no approval request {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2))
    return 0


def _service_url(args) -> str:
    """--service, else $JITGATE_APPROVALS_URL, else the one `jitgate up` started (stack.json), else the default."""
    from jitgate.approvals_client import service_url
    from jitgate.cli import _home

    if os.environ.get("JITGATE_APPROVALS_URL"):
        return service_url()
    state = _home(args) / "stack.json"
    if state.exists():
        started = json.loads(state.read_text()).get("approvals")
        if started:
            return started
    return service_url()


def _decide(args, action: str) -> int:
    from jitgate.approvals_client import DecisionRefused, submit_decision

    token = args.token or os.environ.get("JITGATE_TOKEN", "")
    if not token:
        print("an approver token is required: --token \"$(jitgate login ...)\" (or JITGATE_TOKEN)", file=sys.stderr)
        return 2
    if action == "deny" and not (args.reason or "").strip():
        print("a denial needs --reason (the requester sees it)", file=sys.stderr)
        return 2
    try:
        answer = submit_decision(args.id, action, token, reason=args.reason or "", via="cli",
                                 url=args.service or _service_url(args))
    except DecisionRefused as exc:
        print(f"{'token refused' if exc.status == 401 else 'not applied'}: {exc}", file=sys.stderr)
        return 3 if exc.status == 401 else 4
    if answer["status"] == "pending":
        print(f"{args.id}: approval recorded ({answer['approvals']} of {answer['required']})")
    else:
        print(f"{args.id}: {answer['summary']}")
    if answer.get("covers"):
        print(f"the approval {answer['covers']}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("approvals", help="list and decide approval requests (without Slack)")
    asub = p.add_subparsers(dest="approvals_command", required=True)

    a = asub.add_parser("list", help="pending requests (or --status / --all)")
    a.add_argument("--status", choices=["pending", "approved", "denied", "expired", "cancelled", "withdrawn", "consumed"])
    a.add_argument("--all", action="store_true")
    a.add_argument("--target")
    a.add_argument("--limit", type=int, default=50, help="requests per page")
    a.add_argument("--page", type=int, default=1, help="which page (newest first); the listing says when there is another")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_list)

    a = asub.add_parser("show", help="one request as JSON")
    a.add_argument("id")
    a.set_defaults(func=cmd_show)

    for action, helptext in (("approve", "approve a request"), ("deny", "deny a request (with --reason)")):
        a = asub.add_parser(action, help=helptext)
        a.add_argument("id")
        a.add_argument("--token", help="your OIDC ID token (default: $JITGATE_TOKEN)")
        a.add_argument("--reason", required=action == "deny", help="shown to the requester")
        a.add_argument("--service", help="the approvals service URL (default: $JITGATE_APPROVALS_URL)")
        a.set_defaults(func=lambda args, action=action: _decide(args, action))


if __name__ == "__main__":  # pragma: no cover
    from jitgate.cli import main

    raise SystemExit(main(["approvals", *sys.argv[1:]]))
