"""Secrets for egress injection, stored by name, never shown.

The egress proxy injects secrets into requests toward their targets (see
`policy.InjectRule`); the sandbox never holds them. They live in one JSON
file, `<data_dir>/secrets/secrets.json`, mode 0600 in a 0700 directory,
replaced atomically on every change (write a temporary file, fsync, rename),
under a lock so two writers cannot lose each other's change.

Nothing here returns a value except `SecretStore.get`, which returns a
`Secret` (whose repr never shows it) for the proxy. Listings carry the name,
the created/updated times and a fingerprint: HMAC-SHA256 of the value under a
random per-install key kept in `fingerprint.key` (0600). A fingerprint tells
whether a secret changed (it changes on rotation) without revealing the value;
without the key it cannot be checked against guesses, unlike a plain hash.

A secrets file or key file that group or others can read is refused rather
than used (the same rule as the server's own credential files).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..anthropic_api import Secret
from .policy import SECRET_NAME

MAX_VALUE_CHARS = 16 * 1024
FILE_FORMAT = 1


class SecretStoreError(RuntimeError):
    """The secrets file or key cannot be used (mode, corruption). The message says what to do."""


class SecretValueError(ValueError):
    """A name or value that cannot be stored. The message never contains the value."""


@dataclass(frozen=True)
class SecretInfo:
    """What may be shown about a secret: never its value."""

    name: str
    created_at: float
    updated_at: float
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "created_at": self.created_at, "updated_at": self.updated_at, "fingerprint": self.fingerprint}


def check_name(name: object) -> str:
    if not isinstance(name, str) or not SECRET_NAME.fullmatch(name):
        raise SecretValueError("a secret name is letters, digits and '_', not starting with a digit, at most 128 characters (like GITHUB_TOKEN)")
    return name


def check_value(value: object) -> str:
    """The value to store: surrounding whitespace stripped; it must fit in one HTTP header."""
    if isinstance(value, Secret):
        value = value.reveal()
    if not isinstance(value, str):
        raise SecretValueError("value must be a string")
    value = value.strip()
    if not value:
        raise SecretValueError("value must not be empty")
    if len(value) > MAX_VALUE_CHARS:
        raise SecretValueError(f"value must be at most {MAX_VALUE_CHARS} characters")
    if not value.isascii() or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SecretValueError("value must be printable ASCII on one line (it is sent in an HTTP header); it has a control or non-ASCII character")
    return value


class SecretStore:
    """Secrets by name in an owner-only file. `get(name)` is for the egress proxy."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "secrets.json"
        self.key_path = self.directory / "fingerprint.key"
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int, int], dict[str, Any]] | None = None
        self._key: bytes | None = None

    # ------------------------------------------------------------------ reading

    def list(self) -> list[SecretInfo]:
        """Every secret's name, times and fingerprint, sorted by name."""
        entries = self._read()
        return [self._info(name, entry) for name, entry in sorted(entries.items())]

    def info(self, name: str) -> SecretInfo | None:
        entry = self._read().get(name)
        return None if entry is None else self._info(name, entry)

    def get(self, name: str) -> Secret | None:
        """The value, wrapped so it never prints; None if there is no such secret."""
        entry = self._read().get(name)
        return None if entry is None else Secret(entry["value"], f"egress-secret:{name}")

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._read()

    def fingerprint(self, value: str | Secret) -> str:
        raw = value.reveal() if isinstance(value, Secret) else value
        return "hmac-sha256:" + hmac.new(self._fingerprint_key(), raw.encode("utf-8"), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ writing

    def set(self, name: str, value: str | Secret) -> tuple[SecretInfo, bool]:
        """Store or replace a secret; returns its info and whether it was new."""
        check_name(name)
        clean = check_value(value)
        with self._writing() as entries:
            now = time.time()
            old = entries.get(name)
            entries[name] = {"value": clean, "created_at": old["created_at"] if old else now, "updated_at": now}
            info = self._info(name, entries[name])
        return info, old is None

    def delete(self, name: str) -> bool:
        with self._writing() as entries:
            return entries.pop(name, None) is not None

    # ------------------------------------------------------------------ internals

    def _info(self, name: str, entry: dict[str, Any]) -> SecretInfo:
        return SecretInfo(name, entry["created_at"], entry["updated_at"], self.fingerprint(entry["value"]))

    def _read(self) -> dict[str, Any]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return {}
        _check_private(self.path, st)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._cached
        if cached is not None and cached[0] == stamp:
            return dict(cached[1])
        entries = self._parse(self.path.read_text(encoding="utf-8"))
        self._cached = (stamp, entries)
        return dict(entries)

    def _parse(self, text: str) -> dict[str, Any]:
        try:
            doc = json.loads(text)
            entries = doc["secrets"]
            if doc.get("format") != FILE_FORMAT or not isinstance(entries, dict):
                raise ValueError
            for name, entry in entries.items():
                check_name(name)
                if not isinstance(entry.get("value"), str) or not isinstance(entry.get("created_at"), (int, float)) or not isinstance(entry.get("updated_at"), (int, float)):
                    raise ValueError
        except (ValueError, KeyError, TypeError, AttributeError, SecretValueError):
            raise SecretStoreError(f"{self.path} is not a valid secrets file; restore it from a backup or delete it and set the secrets again") from None
        return entries

    @contextlib.contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        """Read-modify-write under a thread lock and a file lock; the new file replaces the old atomically."""
        with self._lock:
            fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                self._cached = None
                entries = self._read()
                yield entries
                self._write(entries)
            finally:
                os.close(fd)  # releases the flock

    def _write(self, entries: dict[str, Any]) -> None:
        data = json.dumps({"format": FILE_FORMAT, "secrets": entries}, indent=1, sort_keys=True).encode("utf-8")
        tmp = self._private_file(data)
        try:
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)
        self._cached = None

    def _fingerprint_key(self) -> bytes:
        if self._key is None:
            if not self.key_path.exists():
                # Write the key aside, then link it into place: the link fails if
                # another process won the race, and then its key is the one used.
                tmp = self._private_file(os.urandom(32).hex().encode("ascii"))
                try:
                    os.link(tmp, self.key_path)
                    _fsync_dir(self.directory)
                except FileExistsError:
                    pass
                finally:
                    tmp.unlink(missing_ok=True)
            _check_private(self.key_path, os.stat(self.key_path))
            try:
                key = bytes.fromhex(self.key_path.read_text(encoding="ascii").strip())
            except ValueError:
                key = b""
            if len(key) < 32:
                raise SecretStoreError(f"{self.key_path} is not a valid fingerprint key; delete it (fingerprints will change)")
            self._key = key
        return self._key

    def _private_file(self, data: bytes) -> Path:
        """A new 0600 file in the directory holding `data`, flushed to disk."""
        tmp = self.directory / f".tmp-{os.urandom(8).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return tmp


def _check_private(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretStoreError(f"{path} is not a regular file")
    if st.st_mode & 0o077:
        raise SecretStoreError(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}; it must be readable by its owner only — run: chmod 600 {path}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
