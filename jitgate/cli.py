"""The `jitgate` command."""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path

from jitgate.settings import Settings


def _home(args) -> Path:
    return Path(args.home or os.environ.get("JITGATE_HOME") or Path.home() / ".jitgate")


def cli_command() -> str:
    """How to call this CLI again in printed advice: `jitgate` when that name on PATH is this
    program, else the path it was started by (`.venv/bin/jitgate` after scripts/install.sh)."""
    import shutil

    started = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started is None or started.name != "jitgate":
        return "jitgate"
    on_path = shutil.which("jitgate")
    if on_path and Path(on_path).resolve() == started.resolve():
        return "jitgate"
    return str(started)


def _settings(args) -> Settings:
    env = dict(os.environ)
    env["JITGATE_HOME"] = str(_home(args))
    state = _home(args) / "stack.json"
    if "JITGATE_POLICY" not in env and state.exists():
        env["JITGATE_POLICY"] = json.loads(state.read_text()).get("policy", "")
    if "JITGATE_BACKENDS" not in env and state.exists():  # a stack started with --backends gcp
        for key, value in json.loads(state.read_text()).get("backends_env", {}).items():
            env.setdefault(key, value)
    return Settings.from_env(env)


def cmd_up(args) -> int:
    from jitgate.devstack import StackError, port_is_free, start_stack

    home = _home(args)
    port = args.port if port_is_free(args.port) else 0
    if port == 0:
        print(f"port {args.port} is busy; picking a free one", file=sys.stderr)
    print("starting the jitgate local stack (demo PostgreSQL, dev OIDC issuer, functions, broker)...", flush=True)
    try:
        stack = start_stack(
            home, broker_port=port, policy_path=Path(args.policy).resolve() if args.policy else None,
            ssh_port=2222 if port_is_free(2222) else 0, http_port=8443 if port_is_free(8443) else 0,
            k8s_port=6443 if port_is_free(6443) else 0, backends=args.backends,
        )
    except StackError as exc:
        print(f"jitgate up failed: {exc}", file=sys.stderr)
        return 1
    bport = stack.broker_port
    agent = stack.broker_info.get("http")
    agents_line = (f"\nAgents (MCP, streamable HTTP): https://{agent}/mcp   HTTP API: https://{agent}/openapi.json\n"
                   f"  send Authorization: Bearer <token>; trust {home / 'tls' / 'broker-dev.crt'} (docs/agents.md)\n") if agent else ""
    jg = cli_command() + (f" --home {shlex.quote(str(home))}" if args.home else "")  # follow-ups reach this stack
    for name, how in (("ssh", "ssh -l <you>+<ssh target> -p {port} 127.0.0.1   (targets of kind ssh)"),
                      ("k8s", "{jg} kubeconfig --target <kubernetes target> --dev   (port {port})")):
        address = stack.broker_info.get(name)
        if address:
            agents_line += f"{'SSH' if name == 'ssh' else 'kubectl'}: " + how.format(port=address.rpartition(":")[2], jg=jg) + "\n"
    print(
        f"""
jitgate is up.
  broker (PostgreSQL)  127.0.0.1:{bport}  TLS with a self-signed dev certificate
  dev OIDC issuer      {stack.issuer.issuer}   (DEV ONLY: issues a token for anyone)
  authorize function   {stack.authorize_url}
  review console       {stack.console_url}   sessions, playback, verification, approvals (sign in as a reviewer: group security){'''
  slack interactions   ''' + stack.slack_interactions_url if stack.slack_interactions_url else ''}
  policy               {stack.policy_path}
  recordings           {home / 'recordings'}
  logs                 {home / 'logs'}

Connect as alice (group sre) to the demo target:

  PGPASSWORD="$({jg} login --dev --user alice@example.com --groups sre)" psql "host=127.0.0.1 port={bport} dbname=demo user=alice@example.com sslmode=require"
{agents_line}
Then: {jg} sessions | {jg} replay <id> | {jg} verify <id>
Press Ctrl-C to stop.
""",
        flush=True,
    )
    stopping = False

    def _stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    try:
        supervisor = Supervisor(stack)
        while not stopping:
            supervisor.check()
            time.sleep(0.5)
    finally:
        print("\nstopping...", flush=True)
        stack.stop()
        print("stopped.")
    return 0


class Supervisor:
    """A child of `jitgate up` that exits is restarted (up to MAX_RESTARTS within WINDOW seconds),
    then reported and left down; the rest of the stack keeps running either way."""

    MAX_RESTARTS = 3
    WINDOW = 300.0

    def __init__(self, stack, out=sys.stderr):
        self.stack = stack
        self.out = out
        self.restarts: dict[str, list[float]] = {}
        self.given_up: set[str] = set()

    def check(self) -> None:
        for index, proc in enumerate(list(self.stack.procs)):
            replacement = self._check_one(proc)
            if replacement is not None:
                self.stack.procs[index] = replacement
        replacement = self._check_one(self.stack.issuer.proc)
        if replacement is not None:
            self.stack.issuer.proc = replacement

    def _check_one(self, proc):
        if proc.popen.poll() is None or proc.name in self.given_up:
            return None
        now = time.monotonic()
        recent = [t for t in self.restarts.get(proc.name, []) if now - t < self.WINDOW]
        if len(recent) >= self.MAX_RESTARTS:
            self.given_up.add(proc.name)
            print(f"{proc.name} exited again (code {proc.popen.returncode}) after {len(recent)} restarts; left down, "
                  f"the rest keeps running; see {proc.log_path}", file=self.out, flush=True)
            return None
        print(f"{proc.name} exited (code {proc.popen.returncode}); restarting it; see {proc.log_path}",
              file=self.out, flush=True)
        self.restarts[proc.name] = recent + [now]
        return proc.respawn()


def cmd_login(args) -> int:
    from jitgate.devstack import StackError, dev_token

    if not args.dev:
        print(
            "jitgate login without --dev: obtain an ID token from your company IdP for the audience in the policy "
            "(for Google: `gcloud auth print-identity-token --audiences=<audience>`) and use it as the password.",
            file=sys.stderr,
        )
        return 2
    state = _home(args) / "stack.json"
    issuer = args.issuer
    if not issuer:
        if not state.exists():
            print("no local stack found: run `jitgate up` first (or pass --issuer URL)", file=sys.stderr)
            return 1
        issuer = json.loads(state.read_text())["issuer"]
    groups = [g for g in (args.groups or "").split(",") if g]
    try:
        token = dev_token(issuer, args.user, groups, ttl=args.ttl)
        if getattr(args, "exec_credential", False):  # kubectl's exec credential plugin protocol
            from broker.k8s.kubeconfig import exec_credential

            token = exec_credential(token)
        print(token)
    except (StackError, OSError) as exc:
        print(f"login failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # httpx errors: the dev issuer is not running
        print(f"login failed: cannot reach the dev issuer at {issuer} ({type(exc).__name__}); is `jitgate up` running?", file=sys.stderr)
        return 1
    return 0


def cmd_kubeconfig(args) -> int:
    from broker.k8s.kubeconfig import cmd_kubeconfig as write_kubeconfig

    return write_kubeconfig(args, _home(args))


def _fmt_time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def cmd_sessions(args) -> int:
    from jitgate.backends import open_backends

    backends = open_backends(_settings(args))
    rows = backends.index.list_sessions(target=args.target, principal=args.user, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sealed sessions yet")
        return 0
    print(f"{'SESSION':32}  {'STARTED (UTC)':19}  {'USER':24}  {'TARGET':12}  {'STMTS':>5}  {'ERR':>3}  END")
    for r in rows:
        print(f"{r['session_id']:32}  {_fmt_time(r['started_at']):19}  {r['principal'][:24]:24}  {r['target'][:12]:12}  "
              f"{r['statements']:>5}  {r['errors']:>3}  {r['end_reason']}")
    return 0


def _load_sealed(args):
    from jitgate.backends import open_backends
    from jitgate.recording.finalize import MANIFEST, RECORDING

    backends = open_backends(_settings(args))
    try:
        recording = backends.recordings.get_object(args.session, RECORDING)
        manifest = backends.recordings.get_object(args.session, MANIFEST)
    except (FileNotFoundError, KeyError):
        print(f"no sealed recording for session {args.session!r} (see `jitgate sessions`)", file=sys.stderr)
        raise SystemExit(1) from None
    return backends, recording, manifest


def cmd_replay(args) -> int:
    from jitgate.recording.seal import parse_events

    _, recording, _ = _load_sealed(args)
    events = parse_events(recording)
    if getattr(args, "asciicast", False):  # a terminal (SSH PTY) as an asciicast v2 file for asciinema
        from jitgate.recording.asciicast import to_asciicast

        try:
            sys.stdout.write(to_asciicast(events, args.channel, title=f"jitgate session {args.session}"))
        except LookupError as exc:
            print(f"jitgate replay --asciicast: {exc}", file=sys.stderr)
            return 1
        return 0
    t0 = events[0]["ts"] if events else 0
    for e in events:
        offset = f"+{e['ts'] - t0:8.3f}s"
        kind = e["type"]
        if kind == "term.output":  # terminal bytes are replayed as they were shown, not as a log line
            sys.stdout.write(e["event"][2])
            sys.stdout.flush()
            if args.speed:
                time.sleep(min(2.0, 0.05 / args.speed))
            continue
        if kind == "session.start":
            p = e["principal"]
            line = f"session {e['session']} by {p['username']} (groups: {', '.join(p['groups']) or '-'}) to {e['target']} from {e['client']}"
        elif kind == "statement":
            line = f"[{e['id']}] {e['decision'].upper():7} {e['sql']}"
            if e.get("params"):
                line += f"   params={json.dumps(e['params'])}"
            if e.get("reason"):
                line += f"\n{'':13}reason: {e['reason']}"
        elif kind == "result":
            line = f"[{e['id']}] -> {e.get('tag') or ''} rows={e.get('rows')} {e['duration_ms']}ms" + (f" ERROR {e['error']}" if e.get("error") else "")
        elif kind == "session.end":
            line = f"session ended: {e['reason']}"
        else:
            line = f"{kind} " + json.dumps({k: v for k, v in e.items() if k not in ('seq', 'ts', 'type', 'chain')})
        print(f"{offset}  {line}")
        if args.speed:
            time.sleep(min(2.0, 0.05 / args.speed))
    return 0


def cmd_verify(args) -> int:
    from jitgate.backends import open_backends
    from jitgate.keys import key_id_of
    from jitgate.recording.audit import verify_session
    from jitgate.recording.trust import SEAL, load_any_public_key

    backends = open_backends(_settings(args))
    trust = backends.trust
    extra = {}
    for path in args.public_key or []:
        key = load_any_public_key(Path(path).read_bytes())
        extra[key_id_of(key)] = key
    if extra:
        trust = trust.with_extra(SEAL, extra)
    result = verify_session(backends, args.session, trust=trust)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(result)
    return 0 if result.ok else 1


def cmd_audit(args) -> int:
    from jitgate.backends import open_backends
    from jitgate.recording.audit import as_json, audit, describe

    settings = _settings(args)
    report = audit(open_backends(settings), spool_dir=settings.spool_dir, never_sealed_seconds=args.never_sealed_after)
    print(as_json(report) if args.json else describe(report))
    return 0 if report.ok else 1


def cmd_keys_trust(args) -> int:
    from jitgate.keys import key_id_of
    from jitgate.recording.trust import TrustFile, load_any_public_key

    pem = Path(args.public_key).read_bytes()
    try:
        key = load_any_public_key(pem)
    except ValueError as exc:
        print(f"{args.public_key}: {exc}", file=sys.stderr)
        return 1
    trust = TrustFile(_settings(args).trust_file)
    key_id = args.key_id or key_id_of(key)
    trust.add(key_id, args.purpose, pem, note=args.note or "")
    print(f"trusted {key_id} for {args.purpose} in {trust.path}")
    return 0


def cmd_policy_check(args) -> int:
    from jitgate.policy import PolicyError, load_policy

    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"OK: {args.path}: {len(policy.targets)} target(s): {', '.join(policy.targets)}")
    return 0


def cmd_policy_explain(args) -> int:
    """Print what the policy decides for one statement (JSON), without running it."""
    from jitgate.policy import PolicyError, load_policy
    from jitgate.policy_explain import ExplainError, explain_shell, explain_sql

    location = args.policy or _settings(args).policy_path
    try:
        policy = load_policy(location)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 2
    groups = frozenset(g.strip() for g in (args.groups or "").split(",") if g.strip())
    try:
        if args.sql is not None:
            answer = explain_sql(policy, args.target, args.user, groups, args.sql)
        else:
            answer = explain_shell(policy, args.target, args.user, groups, args.shell_command)
    except ExplainError as exc:
        print(f"jitgate policy explain: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(answer, indent=2, ensure_ascii=False))
    return 0


def cmd_broker(args) -> int:
    from broker.main import main as broker_main

    broker_main(args.rest)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jitgate", description="jitgate: the access gateway for AI agents and people.")
    parser.add_argument("--home", help="state directory (default: $JITGATE_HOME or ~/.jitgate)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="start the local stack (demo PostgreSQL, dev issuer, functions, broker)")
    p.add_argument("--port", type=int, default=6432, help="broker PostgreSQL port (default 6432)")
    p.add_argument("--policy", help="use this policy file instead of the generated demo policy")
    p.add_argument("--backends", choices=("embedded", "gcp"), default="embedded",
                   help="embedded (default) or gcp: Firestore/Pub/Sub/Cloud Storage emulators (uses "
                        "*_EMULATOR_HOST when set, else starts the emulators from the Google Cloud SDK)")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("login", help="print an OIDC ID token to use as the password")
    p.add_argument("--dev", action="store_true", help="ask the local stack's dev issuer (DEV ONLY)")
    p.add_argument("--user", default="alice@example.com")
    p.add_argument("--groups", default="", help="comma-separated groups, e.g. sre,dba")
    p.add_argument("--ttl", type=int, help="token lifetime in seconds (default 3600)")
    p.add_argument("--issuer", help="dev issuer URL (default: from the running stack)")
    p.add_argument("--exec-credential", action="store_true", help="print a kubectl ExecCredential (JSON) instead of the token")
    p.set_defaults(func=cmd_login)

    p = sub.add_parser("kubeconfig", help="write a kubeconfig for the broker's Kubernetes endpoint (one target)")
    p.add_argument("--target", required=True)
    p.add_argument("--server", help="https://HOST:PORT of the broker's k8s listener (default: the local stack's)")
    p.add_argument("--ca", help="PEM file to trust for the broker (default: the local stack's dev certificate)")
    p.add_argument("--token", help="a static bearer token (your IdP's ID token) instead of the dev exec plugin")
    p.add_argument("--dev", action="store_true", help="exec plugin: a fresh dev-issuer token per kubectl call (DEV ONLY)")
    p.add_argument("--user", default="alice@example.com", help="with --dev: who to be")
    p.add_argument("--groups", default="", help="with --dev: comma-separated groups")
    p.add_argument("--namespace", help="default namespace of the context")
    p.add_argument("-o", "--output", help="write here (mode 0600) instead of stdout")
    p.set_defaults(func=cmd_kubeconfig)

    p = sub.add_parser("sessions", help="list sealed sessions")
    p.add_argument("--target")
    p.add_argument("--user")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_sessions)

    p = sub.add_parser("replay", help="show a session's recording in order")
    p.add_argument("session")
    p.add_argument("--speed", type=float, default=0, help="pace the output (0: print at once)")
    p.add_argument("--asciicast", action="store_true",
                   help="write an SSH terminal as asciicast v2 (asciinema play FILE) instead of the event log")
    p.add_argument("--channel", type=int, help="with --asciicast: which terminal of the session (default: the first)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("verify", help="check that a session's recording is its own, whole, signed by a trusted key "
                                      "and in the seal ledger")
    p.add_argument("session")
    p.add_argument("--public-key", action="append", help="also trust this seal public key (PEM)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (status, problems, key)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("audit", help="walk the seal ledger and the store: missing, changed, unledgered and "
                                     "never-sealed sessions, a broken ledger")
    p.add_argument("--never-sealed-after", type=float, default=3600.0,
                   help="report spools/chunks unsealed for longer than this many seconds (default 3600)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("keys", help="trusted keys of this deployment")
    ksub = p.add_subparsers(dest="keys_command", required=True)
    kt = ksub.add_parser("trust", help="add a public key to the local trust file")
    kt.add_argument("public_key", help="PEM file")
    kt.add_argument("--purpose", choices=("seal", "session-closed"), default="seal")
    kt.add_argument("--key-id", help="id the signatures name (default: ed25519:<hash> of the key)")
    kt.add_argument("--note")
    kt.set_defaults(func=cmd_keys_trust)

    p = sub.add_parser("policy", help="policy file tools")
    psub = p.add_subparsers(dest="policy_command", required=True)
    pc = psub.add_parser("check", help="validate a policy file")
    pc.add_argument("path")
    pc.set_defaults(func=cmd_policy_check)
    pe = psub.add_parser("explain", help="print the classes, reasons and decision for a statement (JSON); runs nothing")
    pe.add_argument("--target", required=True, help="target name in the policy")
    pe.add_argument("--user", required=True, help="who asks (the IdP username, e.g. alice@example.com)")
    pe.add_argument("--groups", default="", help="comma-separated groups of that user, e.g. sre,dba")
    pe.add_argument("--policy", help="policy file (default: $JITGATE_POLICY or the local stack's)")
    what = pe.add_mutually_exclusive_group(required=True)
    what.add_argument("--sql", help="a SQL text as a client would send it (one or more statements)")
    what.add_argument("--command", dest="shell_command",
                      help="a shell command line (SSH exec, kubectl exec, agent exec); empty: an interactive shell")
    pe.set_defaults(func=cmd_policy_explain)

    p = sub.add_parser("broker", help="run the broker (settings from JITGATE_* variables)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_broker)

    try:  # approvals subcommands (jitgate approvals list|approve|deny)
        from jitgate.approvals_cli import register as register_approvals
    except ImportError:
        pass
    else:
        register_approvals(sub)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `jitgate sessions | head`: the reader had enough; exit quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
