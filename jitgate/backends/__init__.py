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
    signer: Any  # Signer (manifests)
    public_keys: dict  # key_id -> Ed25519PublicKey, for verify
    name: str = "embedded"

    def close(self) -> None:
        self.bus.close()


def open_backends(settings: Settings) -> Backends:
    if settings.backends == "embedded":
        from jitgate.backends.embedded import EnvFileSecrets, InProcessBus, LocalRecordingStore, SqliteState
        from jitgate.keys import LocalSigner, load_public_key

        state = SqliteState(settings.state_db)
        signer = LocalSigner(settings.keys_dir / "manifest-signing.pem")
        public = {signer.key_id: load_public_key(signer.public_key_pem())}
        return Backends(
            index=state,
            approvals=state,
            bus=InProcessBus(settings.push_endpoints, settings.project),
            recordings=LocalRecordingStore(settings.recordings_dir),
            secrets=EnvFileSecrets(settings.policy_base_dir),
            signer=signer,
            public_keys=public,
            name="embedded",
        )
    if settings.backends == "gcp":
        from jitgate.backends.gcp import open_gcp_backends  # noqa: PLC0415 - optional dependency set

        return open_gcp_backends(settings)
    raise ValueError(f"JITGATE_BACKENDS={settings.backends!r}: choose 'embedded' or 'gcp'")
