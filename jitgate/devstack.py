"""The one-machine stack: demo PostgreSQL, dev OIDC issuer, functions, broker.

``jitgate up`` and the test suite both build on these pieces, so what the tests
exercise is what a newcomer runs. Every process binds to 127.0.0.1.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

REPO = Path(__file__).resolve().parent.parent
DEV_ISSUER_DIR = REPO / "devissuer"
DEMO_SQL = Path(__file__).resolve().parent / "demo" / "demo.sql"
DEV_CLIENT_SECRET = "jitgate-dev-secret"
DEV_AUDIENCE = "jitgate-dev"
DEV_GRANT = "urn:jitgate:params:grant-type:dev-login"


class StackError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def wait_for(check, timeout: float, what: str, proc: "Proc | None" = None):
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        if proc is not None and proc.popen.poll() is not None:
            raise StackError(f"{what} exited with code {proc.popen.returncode}; log: {proc.log_path}\n{proc.tail()}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last_error = exc
        time.sleep(0.1)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s ({last_error!r})" + (f"; log: {proc.log_path}\n{proc.tail()}" if proc else ""))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    argv: list[str] | None = None
    env: dict[str, str] | None = None
    cwd: Path | None = None

    def respawn(self) -> "Proc":
        """The same command again (same log, appended): a child that exited is restarted, not mourned."""
        if self.argv is None:
            raise StackError(f"{self.name} cannot be restarted (started without its command line)")
        return spawn(self.name, self.argv, self.log_path.parent, env=self.env, cwd=self.cwd)

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15, sig: int = signal.SIGTERM) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
        return self.popen.returncode


@dataclass
class ExportingProc(Proc):
    """An emulator whose state is exported into the home before it stops (kept across restarts)."""

    export: Callable[[], object] | None = None

    def stop(self, timeout: float = 15, sig: int = signal.SIGTERM) -> int | None:
        if self.export is not None and self.popen.poll() is None:
            try:
                self.export()
            except Exception as exc:  # noqa: BLE001 - stopping goes on; say what is not kept
                print(f"{self.name}: export before stop failed ({type(exc).__name__}: {exc}); "
                      "its data will not be there at the next start", file=sys.stderr)
        return super().stop(timeout, sig)


def spawn(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    fh = open(log_path, "ab")
    popen = subprocess.Popen(
        argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True
    )
    fh.close()
    return Proc(name, popen, log_path, argv=list(argv), env=env, cwd=cwd)


# --- PostgreSQL ------------------------------------------------------------------------


def pg_bindir() -> Path:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise StackError("PostgreSQL server binaries (initdb, pg_ctl) are not installed; run scripts/install.sh")


def service_user() -> str | None:
    """initdb and pg_ctl refuse to run as root: as root, run them as a non-root account."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "jitgate"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "jitgate"], check=True)
    return "jitgate"


def _as_user(argv: list[str]) -> list[str]:
    user = service_user()
    return ["runuser", "-u", user, "--", *argv] if user else argv


def postgres_root(home: Path) -> Path:
    """Where the demo cluster lives. As root, the service user must be able to reach it, and
    homes like /root or pytest's temp dirs are private, so it goes under the temp dir instead."""
    if service_user() is None:
        return home / "postgres"
    import hashlib
    import tempfile

    return Path(tempfile.gettempdir()) / f"jitgate-pg-{hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:12]}"


@dataclass
class Postgres:
    root: Path
    port: int
    broker_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    md5_password: str = field(default_factory=lambda: secrets.token_urlsafe(18))
    proc_log: Path | None = None

    BROKER_ROLE = "jitgate_broker"
    MD5_ROLE = "jitgate_md5"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    def _chown(self, path: Path) -> None:
        user = service_user()
        if user:
            shutil.chown(path, user, user)

    def start(self) -> "Postgres":
        bindir = pg_bindir()
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        os.chmod(self.root, 0o755)
        os.chmod(self.socket_dir, 0o777)
        self._chown(self.root)
        self._chown(self.socket_dir)
        if not (self.data / "PG_VERSION").exists():
            subprocess.run(
                _as_user([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                          "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8"]),
                check=True, capture_output=True,
            )
            with open(self.data / "postgresql.conf", "a") as conf:
                conf.write(
                    f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.socket_dir}'\n"
                    "max_connections = 200\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 256MB\n"
                )
            hba = self.data / "pg_hba.conf"
            hba.write_text(
                "local all all trust\n"
                f"host all {self.MD5_ROLE} 127.0.0.1/32 md5\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
        else:
            conf = self.data / "postgresql.conf"
            text = conf.read_text()
            import re

            conf.write_text(re.sub(r"\nport = \d+\n", f"\nport = {self.port}\n", text))
        self.proc_log = self.root / "postgres.log"
        if not self.proc_log.exists():
            self.proc_log.touch()
        self._chown(self.proc_log)
        result = subprocess.run(
            _as_user([str(bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.proc_log), "-w", "-t", "60", "start"]),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise StackError(f"PostgreSQL did not start: {result.stderr or result.stdout}\n{self.proc_log.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        subprocess.run(
            _as_user([str(pg_bindir() / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
            capture_output=True,
        )

    def psql(self, sql: str, database: str = "postgres", *, check: bool = True) -> str:
        result = subprocess.run(
            ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
             "-U", "postgres", "-d", database, "-c", sql],
            capture_output=True, text=True,
        )
        if check and result.returncode != 0:
            raise StackError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def dsn(self, database: str = "postgres", user: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} dbname={database} user={user}"

    def setup_demo(self, database: str = "demo") -> None:
        """The demo target: sample data owned by the broker's role, plus an md5 role."""
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
        self.psql(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.BROKER_ROLE}') THEN "
            f"CREATE ROLE {self.BROKER_ROLE} LOGIN; END IF; END$$;"
        )
        self.psql(f"ALTER ROLE {self.BROKER_ROLE} PASSWORD '{self.broker_password}'")
        self.psql(
            f"DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{self.MD5_ROLE}') THEN "
            f"CREATE ROLE {self.MD5_ROLE} LOGIN; END IF; END$$;"
        )
        self.psql(f"SET password_encryption = 'md5'; ALTER ROLE {self.MD5_ROLE} PASSWORD '{self.md5_password}'")
        if not exists:
            self.psql(f"CREATE DATABASE {database} OWNER {self.BROKER_ROLE}")
            sql = DEMO_SQL.read_text()
            result = subprocess.run(
                ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.socket_dir), "-p", str(self.port),
                 "-U", self.BROKER_ROLE, "-d", database],
                input=sql, capture_output=True, text=True,
            )
            if result.returncode != 0:
                raise StackError(f"loading the demo data failed: {result.stderr}")
            self.psql(f"GRANT pg_read_all_data TO {self.MD5_ROLE}")


# --- dev OIDC issuer -------------------------------------------------------------------


def ensure_node_modules() -> None:
    if not (DEV_ISSUER_DIR / "node_modules" / "oidc-provider").exists():
        if not shutil.which("npm"):
            raise StackError("Node.js and npm are needed for the dev OIDC issuer (apt-get install nodejs npm)")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=DEV_ISSUER_DIR, check=True)


@dataclass
class DevIssuer:
    proc: Proc
    issuer: str
    keys_file: Path

    @classmethod
    def start(cls, state_dir: Path, port: int = 0) -> "DevIssuer":
        ensure_node_modules()
        state_dir.mkdir(parents=True, exist_ok=True)
        info = state_dir / "issuer.json"
        info.unlink(missing_ok=True)
        keys_file = state_dir / "issuer-keys.json"
        port = port or free_port()
        proc = spawn(
            "dev-issuer",
            ["node", str(DEV_ISSUER_DIR / "server.mjs"), "--port", str(port), "--issuer-file", str(info),
             "--keys-file", str(keys_file), "--client-secret", DEV_CLIENT_SECRET],
            state_dir / "logs",
        )
        wait_for(lambda: info.exists() and info.stat().st_size > 0, 30, "dev OIDC issuer", proc)
        issuer = json.loads(info.read_text())["issuer"]
        wait_for(lambda: httpx.get(issuer + "/.well-known/openid-configuration", timeout=2).status_code == 200, 30, "dev issuer discovery", proc)
        return cls(proc, issuer, keys_file)

    def _kids(self) -> set[str]:
        jwks_uri = httpx.get(self.issuer + "/.well-known/openid-configuration", timeout=5).json()["jwks_uri"]
        return {k["kid"] for k in httpx.get(jwks_uri, timeout=5).json()["keys"]}

    def rotate_keys(self) -> None:
        """New signing keys (SIGHUP); returns once the issuer publishes them."""
        before = self._kids()
        os.kill(self.proc.popen.pid, signal.SIGHUP)
        wait_for(lambda: self._kids().isdisjoint(before), 15, "dev issuer key rotation", self.proc)


def dev_token(issuer: str, user: str, groups: list[str] | tuple[str, ...] = (), *, ttl: int | None = None,
              audience: str | None = None) -> str:
    """Ask the dev issuer for an ID token (real oidc-provider signature; DEV ONLY)."""
    form = {"grant_type": DEV_GRANT, "client_id": "jitgate-dev", "client_secret": DEV_CLIENT_SECRET,
            "username": user, "groups": ",".join(groups)}
    if ttl is not None:
        form["ttl"] = str(ttl)
    if audience:
        form["audience"] = audience
    response = httpx.post(issuer.rstrip("/") + "/token", data=form, timeout=10)
    if response.status_code != 200:
        raise StackError(f"the dev issuer refused: {response.text}")
    return response.json()["id_token"]


# --- policy -----------------------------------------------------------------------------


def demo_policy(issuer: str, pg: Postgres, database: str = "demo") -> str:
    return f"""\
# jitgate policy for the local demo stack (generated by `jitgate up`; edit a copy and pass --policy).
version: 1
identity:
  issuer: {issuer}
  audience: {DEV_AUDIENCE}
  groups_claim: groups

# Who may open recordings in the review console (approvers also sign in there, for approvals).
review:
  groups: [security]

targets:
  demo:
    kind: postgres
    description: Demo PostgreSQL with sample customers (PII) and orders
    address: 127.0.0.1:{pg.port}
    database: {database}
    username: {Postgres.BROKER_ROLE}
    credential: env:JITGATE_DEMO_DB_PASSWORD
    allow:
      groups: [sre, dba, analysts]
    guardrails:
      ddl: approve
      dml_unbounded: approve
      drop_database: deny
    overrides:
      - groups: [dba]
        guardrails: {{ddl: allow}}
    approvals:
      approver_groups: [dba]
      required: 1
      ttl: 1h
      wait: 5m
    masking:
      clear_groups: [privacy-officers]
      rules:
        - columns: [email, "customers.phone"]
          strategy: partial
        - columns: [card_number, iban, ssn]
          strategy: partial
          keep_last: 4
        - detectors: [email, card, iban, ssn, phone, secret]
          strategy: redact
# An SSH target (the demo stack runs no sshd; fill in a VM and uncomment). People get the
# class deny-list and may open shells; agents get the read-only allow-list: anything else,
# and any interactive or stdin-fed shell, waits for a human.
#  web-1:
#    kind: ssh
#    address: 10.0.0.7:22
#    username: deploy
#    credential: file:/etc/jitgate/web-1.key
#    host_key: "ssh-ed25519 AAAA..."
#    allow:
#      groups: [sre, agents]
#    commands: {{mode: denylist}}
#    shells: allow
#    overrides:
#      - groups: [agents]
#        commands: {{mode: allowlist, approve_others: true}}
#        shells: approve
#    approvals:
#      approver_groups: [sre]
#      session_access: 30m
"""


# --- functions and broker ----------------------------------------------------------------


def function_server(name: str, port: int, env: dict[str, str], log_dir: Path, signature: str = "http") -> Proc:
    argv = [sys.executable, "-m", "functions_framework", "--target", name, "--source",
            str(REPO / "functions" / name / "main.py"), "--host", "127.0.0.1", "--port", str(port),
            "--signature-type", signature]
    proc = spawn(f"fn-{name}", argv, log_dir, env=env, cwd=REPO)
    wait_for(lambda: _answers(port), 60, f"function {name}", proc)
    return proc


def _answers(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def base_env(home: Path, policy: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "JITGATE_HOME": str(home),
            "JITGATE_POLICY": str(policy),
            "GOOGLE_CLOUD_PROJECT": env.get("GOOGLE_CLOUD_PROJECT", "jitgate-local"),
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def start_broker(home: Path, env: dict[str, str], log_dir: Path, name: str = "broker") -> tuple[Proc, dict]:
    ready = home / f"{name}-ready.json"
    ready.unlink(missing_ok=True)
    proc = spawn(name, [sys.executable, "-m", "broker", "--ready-file", str(ready)], log_dir, env=env, cwd=REPO)
    wait_for(lambda: ready.exists() and ready.stat().st_size > 0, 60, "broker", proc)
    return proc, json.loads(ready.read_text())


@dataclass
class Stack:
    home: Path
    pg: Postgres
    issuer: DevIssuer
    policy_path: Path
    procs: list[Proc]
    broker_info: dict
    authorize_url: str
    env: dict[str, str]
    console_url: str = ""
    slack_interactions_url: str = ""

    @property
    def broker_port(self) -> int:
        return int(self.broker_info["pg"].rpartition(":")[2])

    @property
    def drain_seconds(self) -> float:
        return float(self.env.get("JITGATE_DRAIN_SECONDS") or 25)

    def add_targets(self, targets_yaml: str, **values) -> None:
        """Append targets (a YAML fragment under `targets:`, formatted with the stack's `pg_port`
        and `values`) to the running stack's policy, once: when its first target is already there,
        nothing is written. The broker reloads the policy file when it changes."""
        fragment = targets_yaml.format(pg_port=self.pg.port, **values)
        first = next(line.strip() for line in fragment.splitlines() if line.strip())
        if first not in self.policy_path.read_text():
            with open(self.policy_path, "a") as fh:
                fh.write(fragment)
            time.sleep(0.05)  # a later write in the same mtime tick would not be seen as a change

    def stop(self) -> None:
        """One shared deadline: the broker (stopped first) drains its sessions, has them sealed
        through the functions that are still up, and only then do the others stop."""
        deadline = time.monotonic() + self.drain_seconds + 20
        for proc in reversed(self.procs):
            proc.stop(timeout=max(5.0, deadline - time.monotonic()))
        self.issuer.proc.stop()
        self.pg.stop()
        if not self.pg.root.is_relative_to(self.home):
            # A cluster parked in the temp dir (see postgres_root) goes with its stack;
            # the demo database is loaded again at the next start.
            shutil.rmtree(self.pg.root, ignore_errors=True)


def start_stack(home: Path, *, broker_port: int = 0, policy_path: Path | None = None, pg_port: int = 0,
                extra_env: dict[str, str] | None = None, ssh_port: int = 0, http_port: int = 0,
                k8s_port: int = 0, backends: str = "embedded", emulator_env: dict[str, str] | None = None,
                process_env: dict[str, dict[str, str]] | None = None,
                authorize_front: Callable[[str], str] | None = None) -> Stack:
    """backends="gcp": Firestore, Pub/Sub and Cloud Storage emulators (emulator_env, else the
    *_EMULATOR_HOST variables of this process, else emulators started here and stopped with the stack).

    process_env: extra environment of one process ("broker", or a function's name), e.g. to
    give it its own identity; authorize_front: given authorize's URL, the URL the broker
    calls instead (something in front of it, such as Cloud Run's invoker check)."""
    own = process_env or {}
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "logs"
    pg = Postgres(postgres_root(home), pg_port or free_port())
    secrets_file = home / "demo-db.json"
    if secrets_file.exists():  # keep the same held credential across restarts of the same home
        saved = json.loads(secrets_file.read_text())
        pg.broker_password, pg.md5_password = saved["broker"], saved["md5"]
    pg.start()
    pg.setup_demo()
    fd = os.open(secrets_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({"broker": pg.broker_password, "md5": pg.md5_password}, fh)
    procs: list[Proc] = []
    issuer = None
    try:
        gcp_env = _gcp_stack_env(home, emulator_env, procs) if backends == "gcp" else {}
        issuer = DevIssuer.start(home)
        if policy_path is None:
            policy_path = home / "demo-policy.yaml"
            policy_path.write_text(demo_policy(issuer.issuer, pg))
        authorize_port, finalize_port = free_port(), free_port()
        notify_port, approvals_port, expire_port, console_port = free_port(), free_port(), free_port(), free_port()
        env = base_env(
            home, policy_path,
            JITGATE_DEMO_DB_PASSWORD=pg.broker_password,
            JITGATE_DEMO_MD5_PASSWORD=pg.md5_password,
            JITGATE_AUTHORIZE_URL=f"http://127.0.0.1:{authorize_port}",
            JITGATE_PUSH_ENDPOINTS=f"session-closed=http://127.0.0.1:{finalize_port},"
                                   f"approval-requested=http://127.0.0.1:{notify_port}",
            JITGATE_EXPIRE_URL=f"http://127.0.0.1:{expire_port}",
            JITGATE_APPROVALS_URL=f"http://127.0.0.1:{approvals_port}",
            JITGATE_PG_LISTEN=f"127.0.0.1:{broker_port}",
            JITGATE_METRICS_LISTEN="127.0.0.1:0",
            JITGATE_SSH_LISTEN=f"127.0.0.1:{ssh_port}",
            JITGATE_HTTP_LISTEN=f"127.0.0.1:{http_port}",
            JITGATE_K8S_LISTEN=f"127.0.0.1:{k8s_port}",
            **gcp_env,
            **(extra_env or {}),
        )
        if backends == "gcp":
            _provision_gcp(home, env)
        procs.append(function_server("authorize", authorize_port, env | own.get("authorize", {}), logs))
        procs.append(function_server("finalize_recording", finalize_port, env | own.get("finalize_recording", {}), logs,
                                     signature="cloudevent"))
        # Approvals: Slack when SLACK_BOT_TOKEN is set (extra_env), the review console always.
        procs.append(function_server("notify_approvers", notify_port, env, logs, signature="cloudevent"))
        # The approvals service signs every decision (Slack clicks at /slack, the console and the CLI).
        procs.append(function_server("approvals", approvals_port, env, logs))
        procs.append(function_server("expire_approvals", expire_port, env, logs))
        console = spawn("review", [sys.executable, "-m", "jitgate.review", "--port", str(console_port)], logs,
                        env=env | own.get("review", {}), cwd=REPO)
        procs.append(console)
        wait_for(lambda: _answers(console_port), 30, "review console", console)
        console_url = f"http://127.0.0.1:{console_port}"
        slack_url = f"{env['JITGATE_APPROVALS_URL']}/slack" if env.get("SLACK_BOT_TOKEN") and env.get("SLACK_SIGNING_SECRET") else ""
        broker_env = env | own.get("broker", {})
        if authorize_front:
            broker_env["JITGATE_AUTHORIZE_URL"] = authorize_front(env["JITGATE_AUTHORIZE_URL"])
        broker, info = start_broker(home, broker_env, logs)
        procs.append(broker)
        state = {"issuer": issuer.issuer, "broker": info, "authorize": env["JITGATE_AUTHORIZE_URL"], "pg_port": pg.port,
                 "policy": str(policy_path), "console": console_url, "slack_interactions": slack_url,
                 "approvals": env["JITGATE_APPROVALS_URL"],
                 "backends_env": gcp_env}
        (home / "stack.json").write_text(json.dumps(state, indent=2))
        return Stack(home, pg, issuer, policy_path, procs, info, env["JITGATE_AUTHORIZE_URL"], env,
                     console_url=console_url, slack_interactions_url=slack_url)
    except BaseException:
        for proc in reversed(procs):
            proc.stop()
        if issuer:
            issuer.proc.stop()
        pg.stop()
        raise


def _gcp_stack_env(home: Path, emulator_env: dict[str, str] | None, procs: list[Proc]) -> dict[str, str]:
    names = ("PUBSUB_EMULATOR_HOST", "FIRESTORE_EMULATOR_HOST", "STORAGE_EMULATOR_HOST")
    env = dict(emulator_env or {})
    if not all(env.get(n) for n in names):
        if all(os.environ.get(n) for n in names):
            env = {n: os.environ[n] for n in names} | env
        else:
            from jitgate.backends.gcp.emulators import Emulators

            emulators = Emulators(home / "emulators").start(persistent=True)
            project = env.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT") or "jitgate-local"
            firestore = emulators.procs["firestore"]
            emulators.procs["firestore"] = ExportingProc(
                firestore.name, firestore.popen, firestore.log_path, firestore.argv, firestore.env, firestore.cwd,
                export=lambda: emulators.export_firestore(project))
            procs.extend(emulators.procs.values())  # stopped last, after the broker and functions
            env = emulators.env() | env
    project = env.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GOOGLE_CLOUD_PROJECT") or "jitgate-local"
    env.update(JITGATE_BACKENDS="gcp", GOOGLE_CLOUD_PROJECT=project)
    env.setdefault("JITGATE_RECORDINGS_BUCKET", f"{project}-jitgate-recordings")
    if not env["STORAGE_EMULATOR_HOST"].startswith(("http://", "https://")):
        env["STORAGE_EMULATOR_HOST"] = "http://" + env["STORAGE_EMULATOR_HOST"]
    return env


def _provision_gcp(home: Path, env: dict[str, str]) -> None:
    """Topics, push subscriptions to the functions, the bucket; and, on a local fake-gcs-server,
    <home>/recordings as a view of the bucket so recordings can be looked at as files."""
    from jitgate.backends.gcp import provision
    from jitgate.settings import Settings

    settings = Settings.from_env(env)
    provision(settings)
    from jitgate.review.audit import provision_audit_bucket

    provision_audit_bucket(settings)
    root = env.get("JITGATE_GCS_EMULATOR_ROOT")
    link = home / "recordings"
    if root and not link.exists() and not link.is_symlink():
        link.symlink_to(Path(root) / env["JITGATE_RECORDINGS_BUCKET"], target_is_directory=True)
