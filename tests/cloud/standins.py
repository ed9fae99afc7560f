"""Google's checks around the GCP test stack, with the rules infra/ sets (tests/cloud/iam_model.py).

- the broker's Cloud Storage calls go through a permission proxy acting as jitgate-broker,
  finalize_recording's through one acting as jitgate-fn-finalize-recording, the review
  console's through one acting as jitgate-review;
- the broker calls authorize through Cloud Run's invoker check, with the ID token of a
  stand-in metadata server (JITGATE_AUTHORIZE_AUTH=google-id-token, as infra/ configures it).

At the end, `unexpected_refusals()` lists what a proxy refused that production would refuse
too and the code does not expect: a broker or finalize needing a permission infra/ does not
grant shows there.
"""
from __future__ import annotations

from tests.cloud import iam_model
from tests.cloud.cloud_run import CloudRunInvoker
from tests.cloud.gcs_iam import GcsIamProxy
from tests.cloud.metadata_server import MetadataServer

# Refusals production gives too and the code lives with: google-cloud-storage's background read
# of bucket metadata (telemetry; it caches a fallback on 403), the emulator-only provisioning of
# the bucket, and finalize's clean-up of compose scratch objects (kept; lifecycle removes them).
EXPECTED = ("storage.buckets.get", "POST /storage/v1/b:", "/.compose/")


class CloudStandins:
    def __init__(self, emulator_env: dict[str, str], project: str):
        self.project = project
        self.gcs = emulator_env["STORAGE_EMULATOR_HOST"]
        self.bucket = f"{project}-jitgate-recordings"
        self.audit_bucket = f"{project}-jitgate-review-audit"
        self.metadata = MetadataServer(iam_model.account_email("broker", project))
        self.proxies: dict[str, GcsIamProxy] = {}
        self.invoker: CloudRunInvoker | None = None

    def start(self) -> "CloudStandins":
        self.metadata.start()
        buckets = {"recordings": self.bucket, "review_audit": self.audit_bucket}
        for process, identity in (("broker", "broker"), ("finalize_recording", "fn:finalize_recording"),
                                  ("review", "review")):
            grants = iam_model.bucket_grants(identity, buckets)
            self.proxies[process] = GcsIamProxy(self.gcs, grants, identity=identity).start()
        return self

    @property
    def process_env(self) -> dict[str, dict[str, str]]:
        return {
            "broker": {"STORAGE_EMULATOR_HOST": self.proxies["broker"].url, "GCE_METADATA_HOST": self.metadata.host,
                       "JITGATE_AUTHORIZE_AUTH": "google-id-token"},
            "finalize_recording": {"STORAGE_EMULATOR_HOST": self.proxies["finalize_recording"].url},
            # the review console reads recordings and writes its audit trail as jitgate-review
            "review": {"STORAGE_EMULATOR_HOST": self.proxies["review"].url},
        }

    def front_authorize(self, url: str) -> str:
        """Put Cloud Run's invoker check in front of authorize; the broker uses the returned URL."""
        self.invoker = CloudRunInvoker(url, google_public_key=self.metadata.public_key,
                                       invokers=iam_model.invokers("authorize", self.project)).start()
        return self.invoker.url

    def unexpected_refusals(self) -> list[str]:
        out = [f"{name}: {d}" for name, proxy in self.proxies.items() for d in proxy.denied
               if not any(e in d for e in EXPECTED)]
        if self.invoker:
            out += [f"Cloud Run refused the broker: {status} {reason}" for status, reason in self.invoker.refused]
        return out

    def stop(self) -> None:
        for proxy in self.proxies.values():
            proxy.stop()
        if self.invoker:
            self.invoker.stop()
        self.metadata.stop()
