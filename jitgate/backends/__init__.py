"""Backend sets. ``open_backends(settings)`` returns the set JITGATE_BACKENDS names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jitgate.settings import Settings


@dataclass
class Backends:
    index: Any  # SessionIndex
    approvals: Any  # ApprovalStore
    bus: Any  # EventBus
    recordings: Any  # RecordingStore
    secrets: Any  # SecretStore
    signer: Any  # Signer (manifests, ledger checkpoints): finalize's key, never the broker's on GCP
    public_keys: Any  # jitgate.recording.trust.Trust: the keys verify and finalize trust
    name: str = "embedded"
    # The broker's session-closed signer, made on first use (only the broker signs with it).
    closing_signer_factory: Any = None
    _closing_signer: Any = None

    @property
    def trust(self):
        return self.public_keys

    @property
    def closing_signer(self):
        if self._closing_signer is None:
            self._closing_signer = self.closing_signer_factory()
        return self._closing_signer

    def close(self) -> None:
        self.bus.close()


def local_closing_signer(settings: Settings):
    """The broker's own Ed25519 key for session-closed events, trusted at first start."""
    from jitgate.keys import LocalSigner
    from jitgate.recording.trust import SESSION_CLOSED, TrustFile

    signer = LocalSigner(settings.keys_dir / "broker-session-closed.pem")
    TrustFile(settings.trust_file).trust_first_key(SESSION_CLOSED, signer)
    return signer


def open_backends(settings: Settings) -> Backends:
    if settings.backends == "embedded":
        from jitgate.backends.embedded import EnvFileSecrets, InProcessBus, LocalRecordingStore, SqliteState
        from jitgate.keys import LocalSigner
        from jitgate.recording.trust import SEAL, Trust, TrustFile

        state = SqliteState(settings.state_db)
        signer = LocalSigner(settings.keys_dir / "manifest-signing.pem")
        trust_file = TrustFile(settings.trust_file)
        trust_file.trust_first_key(SEAL, signer)
        return Backends(
            index=state,
            approvals=state,
            bus=InProcessBus(settings.push_endpoints, settings.project),
            recordings=LocalRecordingStore(settings.recordings_dir, settings.ledger_dir),
            secrets=EnvFileSecrets(settings.policy_base_dir),
            signer=signer,
            public_keys=Trust(file=trust_file),
            name="embedded",
            closing_signer_factory=lambda: local_closing_signer(settings),
        )
    if settings.backends == "gcp":
        from jitgate.backends.gcp import open_gcp_backends  # noqa: PLC0415 - optional dependency set

        return open_gcp_backends(settings)
    raise ValueError(f"JITGATE_BACKENDS={settings.backends!r}: choose 'embedded' or 'gcp'")
