"""Fresh approver rights: group membership asked of the directory at decision time.

Google Workspace / Cloud Identity: the Cloud Identity Groups API, a transitive membership check
(``groups:lookup`` for the group's resource name, then ``memberships:checkTransitiveMembership``).
Configured with

    JITGATE_DIRECTORY=cloud-identity
    JITGATE_DIRECTORY_GROUP_DOMAIN=example.com     # policy group "dba" is dba@example.com
    JITGATE_DIRECTORY_URL=https://cloudidentity.googleapis.com/v1   (default; the tests point it
                                                                    at a local stand-in)

Against Google the call carries the function's own access token (Application Default
Credentials, scope cloud-identity.groups.readonly). Without a directory, the approvals service
falls back to the groups of the approver's OIDC token, or for Slack to their last sign-in if it
is at most JITGATE_SIGNIN_GROUPS_MAX_AGE old (default 24 h), and says which it used.
"""
from __future__ import annotations

import os

import httpx

GOOGLE_URL = "https://cloudidentity.googleapis.com/v1"
SCOPE = "https://www.googleapis.com/auth/cloud-identity.groups.readonly"


class DirectoryUnavailable(Exception):
    """The directory could not answer; the caller falls back (and says so) or refuses."""


class CloudIdentityGroups:
    def __init__(self, *, url: str = GOOGLE_URL, group_domain: str = "", timeout: float = 10.0, credentials=None):
        self.url = url.rstrip("/")
        self.group_domain = group_domain
        self._http = httpx.Client(timeout=timeout)
        self._credentials = credentials
        self.calls = 0

    @classmethod
    def from_env(cls, env: dict | None = None) -> "CloudIdentityGroups | None":
        env = os.environ if env is None else env
        if (env.get("JITGATE_DIRECTORY") or "").strip().lower() != "cloud-identity":
            return None
        return cls(url=env.get("JITGATE_DIRECTORY_URL") or GOOGLE_URL, group_domain=env.get("JITGATE_DIRECTORY_GROUP_DOMAIN", ""))

    def group_key(self, group: str) -> str:
        if "@" in group or not self.group_domain:
            return group
        return f"{group}@{self.group_domain}"

    def _headers(self) -> dict:
        if not self.url.startswith(GOOGLE_URL):
            return {}
        try:
            import google.auth
            import google.auth.transport.requests

            if self._credentials is None:
                self._credentials, _ = google.auth.default(scopes=[SCOPE])
            if not self._credentials.valid:
                self._credentials.refresh(google.auth.transport.requests.Request())
            return {"Authorization": f"Bearer {self._credentials.token}"}
        except Exception as exc:  # noqa: BLE001
            raise DirectoryUnavailable(f"no credentials for the Cloud Identity API ({type(exc).__name__})") from None

    def _get(self, path: str, params: dict) -> httpx.Response:
        self.calls += 1
        try:
            return self._http.get(f"{self.url}/{path}", params=params, headers=self._headers())
        except httpx.HTTPError as exc:
            raise DirectoryUnavailable(f"the directory is unreachable ({type(exc).__name__})") from None

    def is_member(self, email: str, group: str) -> bool:
        """Transitive membership of ``email`` in ``group``, asked now. Raises DirectoryUnavailable."""
        found = self._get("groups:lookup", {"groupKey.id": self.group_key(group)})
        if found.status_code == 404:
            return False  # no such group in the directory: nobody is in it
        if found.status_code != 200:
            raise DirectoryUnavailable(f"the directory answered HTTP {found.status_code} looking up group {group!r}")
        name = (found.json() or {}).get("name", "")
        if not name.startswith("groups/"):
            raise DirectoryUnavailable(f"the directory's lookup of group {group!r} named no group")
        query = f"member_key_id == '{email}'"
        answer = self._get(f"{name}/memberships:checkTransitiveMembership", {"query": query})
        if answer.status_code != 200:
            raise DirectoryUnavailable(f"the directory answered HTTP {answer.status_code} checking {group!r}")
        return bool((answer.json() or {}).get("hasMembership"))

    def member_groups(self, email: str, groups) -> frozenset[str]:
        return frozenset(g for g in groups if self.is_member(email, g))

