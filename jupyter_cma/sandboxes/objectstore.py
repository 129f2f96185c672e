"""An S3-compatible object store for container sessions' workspaces: how a session moves between hosts.

Off unless `WorkspaceObjectStore.url` is set (`s3://bucket/prefix`). Each
session's workspace is one object, `<prefix>/<session id>.tar.gz`, in the
archive format of `sandboxes/container/volume_archives.py` (so an object is
checked like any imported archive before a byte of it is written). AWS S3 by
default; any S3-compatible service (MinIO, Ceph, Cloudflare R2, …) through
`endpoint_url`.

Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY, a profile, an instance role), never from this
configuration: they are in no config file, log, error or status answer, and
never in a sandbox (the server alone talks to the store).

With `sync`, a session's workspace is pushed each time its container ends, and
before a container starts, a session whose volume here is not the store's
latest version (none here, or the object's ETag moved since this host last
pushed or pulled it: another host ran the session since) pulls the object
into a fresh volume: a server that claims a session's next work item
continues where the other host stopped. Without `sync`, pushes and pulls are
by hand (REST, `jupyter cma workspace push|pull`).

boto3 is an optional dependency: `pip install "jupyter-cma[s3]"`.
"""

from __future__ import annotations

import threading
from typing import IO, Any, TypedDict
from urllib.parse import urlparse

from traitlets import Bool, Integer, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from .base import ObjectStoreError, ObjectStoreNotConfigured


class ObjectStoreStatus(TypedDict):
    """Where the store is, never how to get in (`GET cma/api/status`: `tiers.container.object_store`)."""

    url: str | None
    endpoint_url: str | None
    sync: bool


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
        help="Push a session's workspace each time its container ends, and pull it before a container starts when the "
        "volume here is not the store's latest version, so that sessions move between hosts sharing the store "
        "(default False: by hand only).",
    )
    max_bytes = Integer(
        20 * 1024**3, config=True,
        help="Largest workspace archive pulled from the store, packed and unpacked (default 20 GiB); a larger one is refused.",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._client_lock = threading.Lock()
        self._cached_client: Any = None

    @validate("url", "endpoint_url")
    def _check_url(self, proposal: Any) -> str:
        value = proposal["value"].strip()
        name = proposal["trait"].name
        if value:
            parsed = urlparse(value)
            if parsed.username or parsed.password:
                raise TraitError(f"WorkspaceObjectStore.{name} must not carry credentials: boto3 reads them from "
                                 "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or an instance role")
            if name == "url" and (parsed.scheme != "s3" or not parsed.netloc or parsed.query or parsed.fragment):
                raise TraitError(f"WorkspaceObjectStore.url must look like s3://bucket/prefix, not {value!r}")
            if name == "endpoint_url" and parsed.scheme not in ("http", "https"):
                raise TraitError(f"WorkspaceObjectStore.endpoint_url must be an http(s) URL, not {value!r}")
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

    def describe(self) -> ObjectStoreStatus:
        """For the status API: where, not how to get in."""
        return {"url": self.url or None, "endpoint_url": self.endpoint_url or None, "sync": self.sync and self.enabled}

    # ------------------------------------------------------------------ blocking calls (run them on a thread)

    def _client(self) -> Any:
        """One client for every thread (boto3's clients are thread-safe; making them concurrently is not)."""
        if not self.enabled:
            raise ObjectStoreNotConfigured()
        with self._client_lock:
            if self._cached_client is None:
                try:
                    import boto3
                    from botocore.config import Config
                except ImportError:
                    raise ObjectStoreError('the object store needs boto3: pip install "jupyter-cma[s3]"') from None
                # Bounded: a store that does not answer must not hold a session's start or end for minutes.
                config = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 3})
                self._cached_client = boto3.session.Session().client(
                    "s3", endpoint_url=self.endpoint_url or None, region_name=self.region or None, config=config)
            return self._cached_client

    def upload(self, session_id: str, fileobj: IO[bytes]) -> str:
        """Store the archive in `fileobj` (read from its position) as the session's object; the new object's ETag."""
        client = self._client()
        try:
            client.upload_fileobj(fileobj, self.bucket, self.key(session_id), ExtraArgs={"ContentType": "application/gzip"})
            return str(client.head_object(Bucket=self.bucket, Key=self.key(session_id))["ETag"])
        except Exception as exc:
            raise ObjectStoreError(f"could not store {self.location(session_id)}: {_reason(exc)}") from None

    def etag(self, session_id: str) -> str | None:
        """The ETag of the session's object; None when there is none."""
        client = self._client()
        try:
            return str(client.head_object(Bucket=self.bucket, Key=self.key(session_id))["ETag"])
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise ObjectStoreError(f"could not read {self.location(session_id)}: {_reason(exc)}") from None

    def download(self, session_id: str, fileobj: IO[bytes]) -> str | None:
        """Write the session's object into `fileobj`; its ETag, or None when the store has none for the session.

        A missing bucket, a refusal or a failure is an error, never "none": the caller would start the session
        on an empty workspace.
        """
        client = self._client()
        try:
            answer = client.get_object(Bucket=self.bucket, Key=self.key(session_id))
        except Exception as exc:
            if _code(exc) == "NoSuchKey":
                return None
            hint = " (reading a missing object needs s3:ListBucket on the bucket, or S3 answers AccessDenied)" if _code(exc) == "AccessDenied" else ""
            raise ObjectStoreError(f"could not read {self.location(session_id)}: {_reason(exc)}{hint}") from None
        if int(answer.get("ContentLength") or 0) > self.max_bytes:
            answer["Body"].close()
            raise ObjectStoreError(f"{self.location(session_id)} is larger than WorkspaceObjectStore.max_bytes ({self.max_bytes})")
        try:
            for chunk in answer["Body"].iter_chunks(1024 * 1024):
                fileobj.write(chunk)
        except Exception as exc:
            raise ObjectStoreError(f"could not read {self.location(session_id)}: {_reason(exc)}") from None
        finally:
            answer["Body"].close()
        return str(answer["ETag"])

    def delete(self, session_id: str) -> None:
        """Remove the session's object (its session ended); no error when there is none."""
        client = self._client()
        try:
            client.delete_object(Bucket=self.bucket, Key=self.key(session_id))
        except Exception as exc:
            raise ObjectStoreError(f"could not remove {self.location(session_id)}: {_reason(exc)}") from None


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    return (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")


def _code(exc: Exception) -> str | None:
    return ((getattr(exc, "response", None) or {}).get("Error") or {}).get("Code")


def _reason(exc: Exception) -> str:
    # botocore's messages name the operation, the service's error code and the endpoint; never a credential.
    return f"{type(exc).__name__}: {exc}"
