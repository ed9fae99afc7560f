"""Process settings, read from the environment (JITGATE_*), with defaults for one machine.

The policy file says who may reach what; these settings say where this process
finds its backends and listens. One setting, JITGATE_BACKENDS, picks the
backend set (embedded or gcp); the policy file stays the same.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def _endpoints(value: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in (value or "").split(","):
        if "=" in item:
            topic, _, url = item.partition("=")
            out[topic.strip()] = url.strip()
    return out


def _policy_location(value: str) -> Path | str:
    return value if value.startswith("gs://") else Path(value)


# The most PBKDF2 iterations an upstream may ask of the broker's SCRAM login. PostgreSQL's
# default is 4096 (scram_iterations); 600,000 is the OWASP figure for PBKDF2-HMAC-SHA256, about
# 0.7 s of one core: a hardened target still works, while an upstream cannot make one login burn
# minutes (scramp itself allows 10 million).
PG_MAX_SCRAM_ITERATIONS = 600_000


@dataclass
class Settings:
    home: Path
    policy_path: Path | str  # a local path, or a gs://bucket/object URI (production)
    backends: str = "embedded"
    authorize_url: str = "http://127.0.0.1:8081"
    pg_listen: str = "127.0.0.1:6432"
    metrics_listen: str = "127.0.0.1:9100"
    pg_max_message: int = 64 * 1024 * 1024
    pg_max_scram_iterations: int = PG_MAX_SCRAM_ITERATIONS
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_required: bool = True
    # topic -> URL: the embedded bus pushes these topics as CloudEvents, like Pub/Sub push.
    push_endpoints: dict[str, str] = field(default_factory=dict)
    spool_chunk_bytes: int = 1024 * 1024
    project: str = "local"
    broker_id: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)

    def listen(self, name: str, default: str = "") -> str:
        """JITGATE_<NAME>_LISTEN: where an optional listener binds ('' = disabled)."""
        return self.env.get(f"JITGATE_{name.upper()}_LISTEN", default)

    @property
    def policy_base_dir(self) -> Path | None:
        """Where relative file: credential references resolve (beside a local policy file)."""
        return None if isinstance(self.policy_path, str) else self.policy_path.parent

    @property
    def spool_dir(self) -> Path:
        """This broker's own spool (JITGATE_SPOOL_DIR): brokers never share one, or each would take
        the other's live sessions for orphans of a crash."""
        return Path(self.env.get("JITGATE_SPOOL_DIR") or self.home / "spool")

    @property
    def recordings_dir(self) -> Path:
        return self.home / "recordings"

    @property
    def keys_dir(self) -> Path:
        return self.home / "keys"

    @property
    def trust_file(self) -> Path:
        """Keys trusted for seals and session-closed events (jitgate.recording.trust)."""
        return Path(self.env.get("JITGATE_TRUSTED_KEYS") or self.keys_dir / "trusted-keys.json")

    @property
    def ledger_dir(self) -> Path:
        """The embedded set's seal ledger (on GCP it lives in the recordings bucket)."""
        return self.home / "ledger"

    @property
    def spool_upload_seconds(self) -> float:
        """An active session's spool is uploaded at least this often (JITGATE_SPOOL_UPLOAD_SECONDS)."""
        return float(self.env.get("JITGATE_SPOOL_UPLOAD_SECONDS") or 5)

    @property
    def ledger_checkpoint_every(self) -> int:
        """A signed ledger checkpoint after this many seals (JITGATE_LEDGER_CHECKPOINT_EVERY, default 1:
        every seal signs one, so the ledger's unsigned tail is only the seals still in flight)."""
        return max(1, int(self.env.get("JITGATE_LEDGER_CHECKPOINT_EVERY") or 1))

    @property
    def state_db(self) -> Path:
        return self.home / "state.sqlite3"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = Path(env.get("JITGATE_HOME") or Path.home() / ".jitgate")
        cert = env.get("JITGATE_TLS_CERT")
        key = env.get("JITGATE_TLS_KEY")
        return cls(
            home=home,
            policy_path=_policy_location(env.get("JITGATE_POLICY") or str(home / "policy.yaml")),
            backends=env.get("JITGATE_BACKENDS", "embedded"),
            authorize_url=env.get("JITGATE_AUTHORIZE_URL", "http://127.0.0.1:8081"),
            pg_listen=env.get("JITGATE_PG_LISTEN", "127.0.0.1:6432"),
            metrics_listen=env.get("JITGATE_METRICS_LISTEN", "127.0.0.1:9100"),
            pg_max_message=int(env.get("JITGATE_PG_MAX_MESSAGE", 64 * 1024 * 1024)),
            pg_max_scram_iterations=int(env.get("JITGATE_PG_MAX_SCRAM_ITERATIONS", PG_MAX_SCRAM_ITERATIONS)),
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            tls_required=_bool(env.get("JITGATE_TLS_REQUIRED"), True),
            push_endpoints=_endpoints(env.get("JITGATE_PUSH_ENDPOINTS")),
            spool_chunk_bytes=int(env.get("JITGATE_SPOOL_CHUNK_BYTES", 1024 * 1024)),
            project=env.get("GOOGLE_CLOUD_PROJECT", "local"),
            broker_id=env.get("JITGATE_BROKER_ID", ""),
            env={k: v for k, v in env.items() if k.startswith(("JITGATE_", "SLACK_", "GOOGLE_", "STORAGE_", "PUBSUB_", "FIRESTORE_"))},
        )
