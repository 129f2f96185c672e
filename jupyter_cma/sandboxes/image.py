"""Build sandbox container images without any network inside the engine.

Sandboxes run with ``--network none`` and the engine itself has no bridge
network, and no container registry may be reachable at all, so
``docker pull`` and ``pip install`` inside a build are not options. Images
are therefore made in two offline-friendly stages:

1. A base image is made from a Debian rootfs that ``debootstrap`` writes on
   the host, from the host's own Debian mirror, and is imported into the
   engine (``docker import``). It is built once and then reused by tag.
2. Each sandbox image is ``FROM`` that base plus a virtualenv in
   :data:`VENV`, installed ``--no-index`` from a wheelhouse that ``pip
   download`` filled on the host (the host trusts its certificates and can
   reach the package index; the build container cannot). The build runs with
   ``network_mode="none"`` and is skipped when an image with the same content
   hash already exists.
"""

from __future__ import annotations

import glob
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import docker
import docker.errors
from docker.utils import parse_repository_tag

__all__ = [
    "BASE_LABEL",
    "DEFAULT_BASE_TAG",
    "HASH_LABEL",
    "SUITE",
    "VENV",
    "build_image",
    "debian_mirror",
    "download_wheelhouse",
    "ensure_base_image",
]

SUITE = "bookworm"
"""Debian release of the base image; its Python is 3.11, glibc 2.36."""

DEFAULT_BASE_TAG = f"jupyter-cma-base:{SUITE}"
BASE_LABEL = "org.jupyter-cma.base"
HASH_LABEL = "org.jupyter-cma.build-hash"
VENV = "/opt/venv"
"""Where sandbox images keep their Python packages (Debian's python3 is
externally managed, so they cannot go into the system site-packages)."""

BASE_PACKAGES = ("bash", "python3", "python3-venv", "ca-certificates")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Target of the wheelhouse: CPython 3.11 on x86_64 glibc 2.36 (bookworm).
# pip only widens the legacy manylinux2014/2010 tags by itself, so the
# PEP 600 tags that bookworm accepts are listed explicitly.
_PYTHON_VERSION = "3.11"
_PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 16, -1)] + [
    "manylinux2014_x86_64"
]

Progress = Callable[[str], None]


def _report(progress: Progress | None, message: str) -> None:
    if progress is not None:
        progress(message)


def _run(cmd: Sequence[str], what: str) -> None:
    """Run a host command; on failure raise with the tail of its output."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")


def _existing_image(client: docker.DockerClient, tag: str):
    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


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


# --- base image --------------------------------------------------------------


def ensure_base_image(
    client: docker.DockerClient,
    tag: str = DEFAULT_BASE_TAG,
    *,
    progress: Progress | None = None,
) -> str:
    """Return the id of the Debian base image ``tag``, making it if missing.

    No registry is reachable, so the base cannot be pulled: it is made with
    ``debootstrap`` on the host (minbase plus bash, python3, python3-venv and
    ca-certificates) and imported into the engine as a single layer. That
    takes about a minute, so an existing image with this tag is returned at
    once and never rebuilt; remove the image to force a rebuild.
    """
    image = _existing_image(client, tag)
    if image is not None:
        _report(progress, f"base image {tag} present")
        return image.id

    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is not installed; run scripts/docker-engine.sh")
    mirror = debian_mirror()
    with tempfile.TemporaryDirectory(prefix="jupyter-cma-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        tarball = Path(tmp) / "rootfs.tar"
        _report(progress, f"debootstrap {SUITE} from {mirror}")
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                "--include=" + ",".join(BASE_PACKAGES),
                SUITE,
                str(rootfs),
                mirror,
            ],
            "debootstrap",
        )
        # apt's package lists are only needed to install more packages,
        # which a network-less image cannot do anyway.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        _report(progress, "packing rootfs")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(tarball), "."], "tar")
        _report(progress, f"importing {tag}")
        repository, image_tag = parse_repository_tag(tag)
        client.api.import_image(
            src=str(tarball),
            repository=repository,
            tag=image_tag or "latest",
            changes=[
                f"LABEL {BASE_LABEL}={SUITE}",
                f"ENV PATH={DEFAULT_PATH}",
                "ENV LANG=C.UTF-8",
                'CMD ["/bin/bash"]',
            ],
        )
    image_id = client.images.get(tag).id
    _report(progress, f"base image {tag} is {image_id[:19]}")
    return image_id


# --- wheelhouse and sandbox images ---------------------------------------------


def download_wheelhouse(requirements: list[str], dest: Path) -> Path:
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
        "--disable-pip-version-check",
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


def _dockerfile(base_tag: str, extra_lines: Sequence[str]) -> str:
    lines = [
        f"FROM {base_tag}",
        "COPY requirements.txt wheels/ /tmp/wheelhouse/",
        f"RUN python3 -m venv {VENV} \\",
        f" && {VENV}/bin/pip install --no-index --no-cache-dir --disable-pip-version-check \\",
        "      --find-links /tmp/wheelhouse -r /tmp/wheelhouse/requirements.txt \\",
        " && rm -rf /tmp/wheelhouse",
        f"ENV VIRTUAL_ENV={VENV} PATH={VENV}/bin:{DEFAULT_PATH}",
        *extra_lines,
    ]
    return "\n".join(lines) + "\n"


def build_image(
    client: docker.DockerClient,
    tag: str,
    *,
    requirements: list[str],
    base_tag: str = DEFAULT_BASE_TAG,
    extra_dockerfile_lines: Sequence[str] = (),
    progress: Progress | None = None,
) -> str:
    """Build a sandbox image with ``requirements`` in :data:`VENV`; return its id.

    The build never touches the network: the wheels are fetched on the host
    (see :func:`download_wheelhouse`), copied into the build context and
    installed ``--no-index``, and the build itself runs with
    ``network_mode="none"``. Building takes tens of seconds, so the image
    carries a hash of everything it was made from (base image id,
    requirements, wheel file names, Dockerfile text) in the
    ``org.jupyter-cma.build-hash`` label, and an image with this tag and the
    same hash is returned without building. The base image is made first if
    it is missing.
    """
    base_id = ensure_base_image(client, base_tag, progress=progress)
    dockerfile = _dockerfile(base_tag, extra_dockerfile_lines)
    with tempfile.TemporaryDirectory(prefix="jupyter-cma-build-") as tmp:
        context = Path(tmp)
        _report(progress, "downloading wheels")
        wheels = download_wheelhouse(requirements, context / "wheels")
        wheel_names = sorted(p.name for p in wheels.iterdir())
        digest = hashlib.sha256(
            json.dumps(
                {
                    "base": base_id,
                    "requirements": list(requirements),
                    "wheels": wheel_names,
                    "dockerfile": dockerfile,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()

        image = _existing_image(client, tag)
        if image is not None and image.labels.get(HASH_LABEL) == digest:
            _report(progress, f"{tag} is up to date")
            return image.id

        (context / "requirements.txt").write_text("".join(r + "\n" for r in requirements))
        (context / "Dockerfile").write_text(dockerfile)
        _report(progress, f"building {tag} ({len(wheel_names)} wheels)")
        image_id = None
        for chunk in client.api.build(
            path=str(context),
            tag=tag,
            network_mode="none",
            labels={HASH_LABEL: digest},
            rm=True,
            forcerm=True,
            pull=False,
            decode=True,
        ):
            if "error" in chunk:
                raise docker.errors.BuildError(chunk["error"].strip(), [chunk])
            line = chunk.get("stream", "").strip()
            if line.startswith("Step "):
                _report(progress, line)
            image_id = chunk.get("aux", {}).get("ID", image_id)
    image_id = image_id or client.images.get(tag).id
    _report(progress, f"built {tag} {image_id[:19]}")
    return image_id
