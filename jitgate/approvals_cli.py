"""`jitgate approvals list|show|approve|deny`: decide approvals without Slack.

The approver proves who they are with an OIDC token (verified against policy.identity,
so the groups are the IdP's), e.g.

    jitgate approvals approve apr_1234 --token "$(jitgate login --dev --user dana@example.com --groups dba)"

Decisions go through jitgate.approvals.apply_decision, the same code the Slack app uses.
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
    rows = [r for r in backends.approvals.list_approvals(status=status, target=args.target, limit=args.limit) if ap.is_request(r)]
    now = time.time()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no {status or ''} approval requests".replace("  ", " "))
        return 0
    print(f"{'ID':20}  {'STATUS':9}  {'REQUESTER':24}  {'TARGET':12}  {'CLASSES':16}  {'EXPIRES (UTC)':19}  STATEMENT")
    for r in rows:
        status_text = ap.EXPIRED if r["status"] == ap.PENDING and now >= r["expires_at"] else r["status"]
        stmt = " ".join(r["statement"].split())
        print(f"{r['approval_id']:20}  {status_text:9}  {r['requester'][:24]:24}  {r['target'][:12]:12}  "
              f"{','.join(r['classes'])[:16]:16}  {_fmt(r['expires_at']):19}  {stmt[:60]}{'…' if len(stmt) > 60 else ''}")
    return 0


def cmd_show(args) -> int:
    _, backends = _open(args)
    record = backends.approvals.get_approval(args.id)
    if record is None:
        print(f"no approval request {args.id!r}", file=sys.stderr)
        return 1
    print(json.dumps(record, indent=2))
    return 0


def _decide(args, action: str) -> int:
    from jitgate import approvals as ap
    from jitgate.identity.oidc import TokenError
    from jitgate.policy import PolicyError, load_policy
    from jitgate.slack.messages import refresh_if_configured

    settings, backends = _open(args)
    token = args.token or os.environ.get("JITGATE_TOKEN", "")
    if not token:
        print("an approver token is required: --token \"$(jitgate login ...)\" (or JITGATE_TOKEN)", file=sys.stderr)
        return 2
    try:
        policy = load_policy(settings.policy_path)
        approver = ap.approver_from_token(token, policy.identity, via="cli", store=backends.approvals)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    except TokenError as exc:
        print(f"token refused: {exc}", file=sys.stderr)
        return 3
    try:
        record = ap.apply_decision(backends, args.id, approver, action, reason=args.reason or "")
    except ap.DecisionError as exc:
        print(f"not applied: {exc}", file=sys.stderr)
        return 4
    finally:
        backends.bus.close()
    refresh_if_configured(backends.approvals, record)
    if record["status"] == ap.PENDING:
        print(f"{args.id}: approval recorded ({len(record['approvals'])} of {record['required']})")
    else:
        print(f"{args.id}: {ap.describe_decision(record)}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("approvals", help="list and decide approval requests (without Slack)")
    asub = p.add_subparsers(dest="approvals_command", required=True)

    a = asub.add_parser("list", help="pending requests (or --status / --all)")
    a.add_argument("--status", choices=["pending", "approved", "denied", "expired", "cancelled", "consumed"])
    a.add_argument("--all", action="store_true")
    a.add_argument("--target")
    a.add_argument("--limit", type=int, default=50)
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
        a.set_defaults(func=lambda args, action=action: _decide(args, action))


if __name__ == "__main__":  # pragma: no cover
    from jitgate.cli import main

    raise SystemExit(main(["approvals", *sys.argv[1:]]))
