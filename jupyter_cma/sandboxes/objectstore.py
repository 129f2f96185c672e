"""An S3-compatible object store for container sessions' workspaces: how a session moves between hosts.

Off unless `WorkspaceObjectStore.url` is set (`s3://bucket/prefix`). Each
session's workspace is one object, `<prefix>/<session id>.tar.gz`, in the
archive format of `sandboxes/workspace.py` (so an object is checked like any
imported archive before a byte of it is written). AWS S3 by default; any
S3-compatible service (MinIO, Ceph, Cloudflare R2, …) through `endpoint_url`.

Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from this
configuration: they are in no config file, log, error or status answer, and
never in a sandbox (the server alone talks to the store).

With `sync`, a session's workspace is pushed each time its container ends, and
a session that has no workspace on this host (it ran on another one) pulls
its object before its container starts: a server that claims a session's
next work item continues where the other host stopped. Without `sync`, pushes
and pulls are by hand (REST, `jupyter cma workspace push|pull`).

boto3 is an optional dependency: `pip install "jupyter-cma[s3]"`.
"""

from __future__ import annotations

from typing import IO, Any
from urllib.parse import urlparse

from traitlets import Bool, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable


class ObjectStoreError(RuntimeError):
    """The object store could not be used; the message says why without any credential."""


class WorkspaceObjectStore(LoggingConfigurable):
    """Where container sessions' workspaces are pushed to and pulled from."""

    url = Unicode(
        "", config=True,
        help="s3://BUCKET[/PREFIX]: where sessions' workspaces go, one object per session (PREFIX/<session>.tar.gz). "
        "Empty (default): no object store.",
    )
    endpoint_url = Unicode(
        "", config=True,
        help="The URL of an S3-compatible service (MinIO, Ceph, R2, …); empty (default): AWS S3. Credentials come from "
        "boto3's chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from configuration.",
    )
    region = Unicode("", config=True, help="The store's region (default: boto3's own, e.g. AWS_DEFAULT_REGION).")
    sync = Bool(
        False, config=True,
        help="Push a session's workspace each time its container ends, and pull it when a session that has no workspace "
        "on this host starts, so that sessions move between hosts sharing the store (default False: by hand only).",
    )

    @validate("url")
    def _check_url(self, proposal: Any) -> str:
        value = proposal["value"].strip()
        if value:
            parsed = urlparse(value)
            if parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment:
                raise TraitError(f"WorkspaceObjectStore.url must look like s3://bucket/prefix, not {value!r}")
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def bucket(self) -> str:
        return urlparse(self.url).netloc

    def key(self, session_id: str) -> str:
        prefix = urlparse(self.url).path.strip("/")
        return f"{prefix}/{session_id}.tar.gz" if prefix else f"{session_id}.tar.gz"

    def location(self, session_id: str) -> str:
        return f"s3://{self.bucket}/{self.key(session_id)}"

    def describe(self) -> dict[str, Any]:
        """For the status API: where, not how to get in."""
        return {"url": self.url or None, "endpoint_url": self.endpoint_url or None, "sync": self.sync and self.enabled}

    # ------------------------------------------------------------------ blocking calls (run them on a thread)

    def _client(self) -> Any:
        if not self.enabled:
            raise ObjectStoreError("no object store is configured: set WorkspaceObjectStore.url (s3://bucket/prefix)")
        try:
            import boto3
        except ImportError:
            raise ObjectStoreError('the object store needs boto3: pip install "jupyter-cma[s3]"') from None
        return boto3.client("s3", endpoint_url=self.endpoint_url or None, region_name=self.region or None)

    def upload(self, session_id: str, fileobj: IO[bytes]) -> str:
        """Store the archive in `fileobj` (read from its position) as the session's object; its s3:// location."""
        client = self._client()
        try:
            client.upload_fileobj(fileobj, self.bucket, self.key(session_id), ExtraArgs={"ContentType": "application/gzip"})
        except Exception as exc:
            raise ObjectStoreError(f"could not store {self.location(session_id)}: {_reason(exc)}") from None
        return self.location(session_id)

    def download(self, session_id: str, fileobj: IO[bytes]) -> bool:
        """Write the session's object into `fileobj`; False when the store has none for it."""
        client = self._client()
        try:
            client.head_object(Bucket=self.bucket, Key=self.key(session_id))
        except Exception as exc:
            if _status(exc) == 404:
                return False
            raise ObjectStoreError(f"could not read {self.location(session_id)}: {_reason(exc)}") from None
        try:
            client.download_fileobj(self.bucket, self.key(session_id), fileobj)
        except Exception as exc:
            raise ObjectStoreError(f"could not read {self.location(session_id)}: {_reason(exc)}") from None
        return True


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    return (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")


def _reason(exc: Exception) -> str:
    # botocore's messages name the operation, the service's error code and the endpoint; never a credential.
    return f"{type(exc).__name__}: {exc}"
