"""Build the sandbox image, on a connected machine or with no network at all.

The image is described once, by ``sandbox/Dockerfile`` (the in-sandbox runtime
lives next to it). Two ways to build it:

- **offline** (the default, and the only way on a machine that cannot reach a
  registry): a Debian base image is made from a root filesystem that
  ``debootstrap`` writes on the host from the host's own Debian mirror, with the
  Dockerfile's ``APT_PACKAGES`` already in it, and imported into the engine
  (``docker import``); the wheels the runtime needs are downloaded on the host
  (the host trusts its certificates and can reach the package index; a build
  container cannot) and installed ``--no-index``. The build runs with
  ``network_mode="none"``.
- **online**: the same Dockerfile ``FROM`` a public Python image, with apt and
  pip fetching from the internet, as ``docker build sandbox/`` does.

Both are cached: every image carries a hash of everything it was made from
(base image, build arguments, the build context's files), and a build whose
hash matches the existing image's is skipped. Users extend the image with extra
apt and pip packages, or with a Dockerfile of their own ``FROM`` it
(:class:`ImageSettings`). Progress goes to a callback; :class:`ProgressBar`
draws it as a bar in a terminal or a notebook.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import docker
import docker.errors
from docker.utils import parse_repository_tag
from traitlets import Bool, Enum, List, Unicode
from traitlets.config import Configurable

from .._version import __version__
from .runtime import RUNTIME_DIR

__all__ = [
    "BASE_LABEL",
    "DEFAULT_BASE_TAG",
    "DEFAULT_IMAGE",
    "HASH_LABEL",
    "SUITE",
    "ImageSettings",
    "ProgressBar",
    "apt_packages",
    "build_sandbox_image",
    "debian_mirror",
    "download_wheelhouse",
    "ensure_base_image",
]

SUITE = "bookworm"
"""Debian release of the offline base image; its Python is 3.11, glibc 2.36."""

DEFAULT_BASE_TAG = f"jupyter-cma-base:{SUITE}"
DEFAULT_IMAGE = f"jupyter-cma-sandbox:{__version__}"
DEFAULT_ONLINE_BASE = "python:3.11-slim-bookworm"
BASE_LABEL = "org.jupyter-cma.base"
BASE_PACKAGES_LABEL = "org.jupyter-cma.base-packages"
HASH_LABEL = "org.jupyter-cma.build-hash"
BASE_MARKER = "etc/jupyter-cma-base"
"""A file in offline base images: the Dockerfile skips apt when it is there (the packages are in already)."""

# What an offline base needs on top of the Dockerfile's APT_PACKAGES (the public Python images have them).
PYTHON_PACKAGES = ("python3", "python3-venv")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Target of the wheelhouse: CPython 3.11 on x86_64 glibc 2.36 (bookworm).
# pip only widens the legacy manylinux2014/2010 tags by itself, so the
# PEP 600 tags that bookworm accepts are listed explicitly.
_PYTHON_VERSION = "3.11"
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64"
]

Progress = Callable[..., None]
"""`progress(message, step=None, total=None)`: a line of news, and where the build is when it knows."""


def _report(progress: Progress | None, message: str, step: int | None = None, total: int | None = None) -> None:
    if progress is not None:
        progress(message, step=step, total=total)


class ProgressBar:
    """A progress callback drawn with tqdm: a bar in a terminal, a widget in a notebook (tqdm.auto)."""

    def __init__(self, description: str = "sandbox image") -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=1, desc=description, unit="step", bar_format="{desc}: {bar} {n_fmt}/{total_fmt} {postfix}")

    def __call__(self, message: str, step: int | None = None, total: int | None = None) -> None:
        if total is not None and total != self._bar.total:
            self._bar.reset(total=total)
        if step is not None:
            self._bar.n = step
        self._bar.set_postfix_str(message[:70], refresh=True)

    def close(self) -> None:
        self._bar.n = self._bar.total
        self._bar.refresh()
        self._bar.close()


class ImageSettings(Configurable):
    """How the sandbox image is built (`c.ImageSettings.…`, read by the server and `jupyter cma build-image`)."""

    tag = Unicode(DEFAULT_IMAGE, help=f"Tag of the sandbox image containers run (default {DEFAULT_IMAGE}). "
                  "With `dockerfile` set, the extended image gets this tag.").tag(config=True)
    mode = Enum(["offline", "online"], "offline", help="How to build: 'offline' (default: a debootstrapped Debian base, "
                "wheels downloaded on the host, no network in the build) or 'online' (FROM online_base, apt and pip in "
                "the build; needs a registry and the internet).").tag(config=True)
    online_base = Unicode(DEFAULT_ONLINE_BASE, help=f"The image an online build starts FROM (default {DEFAULT_ONLINE_BASE}).").tag(config=True)
    extra_apt_packages = List(Unicode(), [], help="Debian packages to add to the image (default none).").tag(config=True)
    extra_pip_packages = List(Unicode(), [], help="Python packages (pip requirement strings) to add to the image's "
                              "/opt/venv (default none). Offline, they must exist as wheels for CPython 3.11 on "
                              "manylinux x86_64.").tag(config=True)
    dockerfile = Unicode("", help="A Dockerfile of your own to build on top of the sandbox image (default none). "
                         "It is given `--build-arg BASE_IMAGE=<the sandbox image>` (write `ARG BASE_IMAGE` then "
                         "`FROM ${BASE_IMAGE}`); its directory is the build context. Offline builds have no network.").tag(config=True)
    auto_build = Bool(True, help="Build the image when the server starts and it is missing or out of date "
                      "(default True). Off: run `jupyter cma build-image` yourself.").tag(config=True)


def _run(cmd: Sequence[str], what: str, progress: Progress | None = None) -> None:
    """Run a host command, passing its lines on as progress; on failure raise with the tail of its output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        del lines[:-30]
        # debootstrap's phases ("Retrieving Packages", "Unpacking the base system", …), not each package
        if progress is not None and line.startswith("I: ") and not re.match(r"I: (Retrieving|Validating|Unpacking|Configuring|Extracting) \S+ ", line + " "):
            _report(progress, line[3:].strip())
    if proc.wait() != 0:
        tail = "\n".join(lines)
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _existing_image(client: docker.DockerClient, tag: str) -> Any:
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def apt_packages(dockerfile: Path | None = None) -> list[str]:
    """The Dockerfile's default APT_PACKAGES: the one list of the image's command-line tools."""
    text = (dockerfile or RUNTIME_DIR / "Dockerfile").read_text()
    match = re.search(r'^ARG APT_PACKAGES="([^"]*)"', text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{dockerfile or RUNTIME_DIR / 'Dockerfile'} has no ARG APT_PACKAGES=\"…\" line")
    return match.group(1).split()


# --- Debian mirror ---------------------------------------------------------


def _deb822_stanzas(text: str) -> Iterable[dict[str, str]]:
    """Yield the stanzas of a deb822 ``.sources`` file as lower-cased dicts."""
    stanza: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if stanza:
                yield stanza
            stanza, key = {}, None
        elif line[0] in " \t" and key is not None:
            stanza[key] += " " + line.strip()  # continuation line
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            stanza[key] = value.strip()
    if stanza:
        yield stanza


def _one_line_entries(text: str) -> Iterable[tuple[str, str]]:
    """Yield ``(uri, suite)`` of the ``deb`` lines of a ``sources.list``."""
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line.startswith("deb "):
            continue
        rest = line[4:].strip()
        if rest.startswith("["):  # options, e.g. [signed-by=...]
            rest = rest.partition("]")[2].strip()
        fields = rest.split()
        if len(fields) >= 2:
            yield fields[0], fields[1]


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """Return the Debian mirror URL that apt uses for ``bookworm``.

    The base image is bootstrapped from the same mirror the host installs
    its own packages from, because that is the one mirror known to be
    reachable (and allowed) from this machine; it is read from the apt
    configuration rather than written into the code.
    """
    candidates: list[str] = []
    for path in sorted(glob.glob(str(apt_dir / "sources.list.d" / "*.sources"))):
        for stanza in _deb822_stanzas(Path(path).read_text()):
            if stanza.get("enabled", "yes").lower() == "no":
                continue
            if "deb" not in stanza.get("types", "").split():
                continue
            if SUITE in stanza.get("suites", "").split():
                candidates += stanza.get("uris", "").split()
    lists = [apt_dir / "sources.list"] + [
        Path(p) for p in sorted(glob.glob(str(apt_dir / "sources.list.d" / "*.list")))
    ]
    for path in lists:
        if path.is_file():
            candidates += [uri for uri, suite in _one_line_entries(path.read_text()) if suite == SUITE]
    for uri in candidates:
        if not uri.startswith("cdrom:"):
            return uri
    raise RuntimeError(
        f"no Debian mirror for suite {SUITE!r} found in {apt_dir}/sources.list or "
        f"{apt_dir}/sources.list.d/*.sources / *.list; the base image is bootstrapped "
        "from it"
    )


# --- offline base image --------------------------------------------------------


def ensure_base_image(
    client: docker.DockerClient,
    tag: str = DEFAULT_BASE_TAG,
    *,
    packages: Sequence[str] = (),
    progress: Progress | None = None,
) -> str:
    """Return the id of the Debian base image ``tag`` holding ``packages``, making it when missing or different.

    No registry is reachable, so the base cannot be pulled: it is made with
    ``debootstrap`` on the host (minbase plus the packages and Python) and
    imported into the engine as a single layer. That takes about a minute, so an
    existing image with this tag and the same package list is returned at once.
    """
    wanted = sorted(set(packages) | set(PYTHON_PACKAGES) | {"bash", "ca-certificates"})
    image = _existing_image(client, tag)
    if image is not None and image.labels.get(BASE_PACKAGES_LABEL) == " ".join(wanted):
        _report(progress, f"base image {tag} is up to date")
        return image.id

    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed (apt-get install debootstrap); the offline base image needs it")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="jupyter-cma-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        tarball = Path(tmp) / "rootfs.tar"
        _report(progress, f"debootstrap {SUITE} from {mirror}")
        _run(["debootstrap", "--variant=minbase", "--include=" + ",".join(wanted), SUITE, str(rootfs), mirror],
             "debootstrap", progress)
        # apt's package lists are only needed to install more packages,
        # which a network-less image cannot do anyway.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        shutil.rmtree(rootfs / "var/cache/apt/archives", ignore_errors=True)
        (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (rootfs / BASE_MARKER).write_text(" ".join(wanted) + "\n")
        _report(progress, "packing the root filesystem")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], "tar")
        _report(progress, f"importing {tag}")
        repository, image_tag = parse_repository_tag(tag)
        client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=image_tag or "latest",
            changes=[
                f"LABEL {BASE_LABEL}={SUITE}",
                f'LABEL {BASE_PACKAGES_LABEL}="{" ".join(wanted)}"',
                f"ENV PATH={DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    image_id = client.images.get(tag).id
    _report(progress, f"base image {tag} is {image_id[:19]}")
    return image_id


# --- wheelhouse ----------------------------------------------------------------------


def download_wheelhouse(requirements: Sequence[str], dest: Path) -> Path:
    """Download wheels for ``requirements`` and all their dependencies to ``dest``.

    This runs on the host, with the host's pip configuration, because build
    containers have no network. Only wheels are accepted (an sdist would
    need build tools and a compiler in the image), and they are chosen for
    the image's interpreter, CPython 3.11 on x86_64 glibc 2.36, not for
    whatever Python runs this code.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not requirements:
        return dest
    cmd = [
        sys.executable, "-m", "pip", "download",
        "--disable-pip-version-check", "--quiet",
        "--dest", str(dest),
        "--only-binary=:all:",
        "--implementation", "cp",
        "--python-version", _PYTHON_VERSION,
        "--abi", "cp" + _PYTHON_VERSION.replace(".", ""),
    ]  # fmt: skip
    for platform in _PLATFORMS:
        cmd += ["--platform", platform]
    _run(cmd + ["--", *requirements], "pip download")
    return dest


def _requirements(runtime: Path) -> list[str]:
    lines = (runtime / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


# --- the sandbox image -------------------------------------------------------------


def _tree_digest(root: Path) -> str:
    """A digest of a build context: every file's path, mode and content (caches left out)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts or not path.is_file():
            continue
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_mode & 0o777:o}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _docker_build(
    client: docker.DockerClient, tag: str, context: Path, *, buildargs: dict[str, str], identity: dict[str, Any],
    offline: bool, progress: Progress | None, dockerfile: str = "Dockerfile",
    prepare: Callable[[], None] | None = None,
) -> str:
    """`docker build` unless an image with this tag was made from the same inputs; returns the image id.

    The inputs are hashed before `prepare` (e.g. downloading wheels) runs, so
    that finding the image up to date costs no download.
    """
    digest = hashlib.sha256(json.dumps({**identity, "buildargs": buildargs, "context": _tree_digest(context)},
                                       sort_keys=True).encode()).hexdigest()
    image = _existing_image(client, tag)
    if image is not None and image.labels.get(HASH_LABEL) == digest:
        _report(progress, f"{tag} is up to date")
        return image.id
    if prepare is not None:
        prepare()
    _report(progress, f"building {tag}")
    image_id = None
    log: list[str] = []
    for chunk in client.api.build(
        path=str(context),
        dockerfile=dockerfile,
        tag=tag,
        buildargs=buildargs,
        network_mode="none" if offline else None,
        labels={HASH_LABEL: digest},
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    ):
        if "error" in chunk:
            tail = "\n".join(log[-20:])
            raise docker.errors.BuildError(f"{chunk['error'].strip()}\n{tail}", [chunk])
        line = chunk.get("stream", "").strip()
        if line:
            log.append(line)
        step = re.match(r"Step (\d+)/(\d+) : (.*)", line)
        if step:
            _report(progress, step.group(3), step=int(step.group(1)) - 1, total=int(step.group(2)))
        image_id = chunk.get("aux", {}).get("ID", image_id)
    image_id = image_id or client.images.get(tag).id
    _report(progress, f"built {tag} {image_id[:19]}")
    return image_id


def build_sandbox_image(
    client: docker.DockerClient,
    settings: ImageSettings | None = None,
    *,
    progress: Progress | None = None,
) -> str:
    """Build (or find up to date) the sandbox image that `settings` describe; return its id.

    The steps: the offline base (when offline), the wheelhouse (when offline),
    `sandbox/Dockerfile` with the runtime, then the user's own Dockerfile on
    top when one is configured. Each is skipped when its inputs did not change.
    """
    settings = settings or ImageSettings()
    offline = settings.mode == "offline"
    own = Path(settings.dockerfile) if settings.dockerfile else None
    if own is not None and not own.is_file():
        raise RuntimeError(f"ImageSettings.dockerfile: {own} is not a file")
    sandbox_tag = f"{settings.tag}-base" if own is not None else settings.tag
    packages = apt_packages() + list(settings.extra_apt_packages)
    with tempfile.TemporaryDirectory(prefix="jupyter-cma-build-") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(RUNTIME_DIR, context, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".keep"))
        (context / "wheels").mkdir(exist_ok=True)
        buildargs = {"PIP_PACKAGES": " ".join(settings.extra_pip_packages)}
        prepare = None
        if offline:
            base_id = ensure_base_image(client, packages=packages, progress=progress)
            requirements = _requirements(context) + list(settings.extra_pip_packages)

            def prepare() -> None:
                _report(progress, "downloading wheels on this machine")
                download_wheelhouse(requirements, context / "wheels")

            buildargs.update(BASE_IMAGE=DEFAULT_BASE_TAG, PIP_OFFLINE="1")
            identity: dict[str, Any] = {"base": base_id}
        else:
            buildargs.update(BASE_IMAGE=settings.online_base, APT_PACKAGES=" ".join(packages))
            identity = {"base": settings.online_base}
        image_id = _docker_build(client, sandbox_tag, context, buildargs=buildargs, identity=identity,
                                 offline=offline, progress=progress, prepare=prepare)
    if own is None:
        return image_id
    return _docker_build(client, settings.tag, own.parent, buildargs={"BASE_IMAGE": sandbox_tag},
                         identity={"base": image_id}, offline=offline, progress=progress, dockerfile=own.name)
