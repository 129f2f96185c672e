"""Offline image builds against the real Docker engine.

These need an engine started by ``scripts/docker-engine.sh`` (no bridge
network) and, on the host only, the Debian mirror and the package index.
The base image is shared with real use and built only when missing.
"""

from __future__ import annotations

import time
from pathlib import Path

import docker
import docker.errors
import pytest

from jupyter_cma.sandboxes.image import (
    BASE_LABEL,
    DEFAULT_BASE_TAG,
    HASH_LABEL,
    build_image,
    debian_mirror,
    ensure_base_image,
)

TEST_TAG = "jupyter-cma-test:offline"
ANTHROPIC = "2.10.0"


@pytest.fixture(scope="module")
def base_image_id(docker_client: docker.DockerClient) -> str:
    # Debootstrapping takes about a minute when the image is missing.
    return ensure_base_image(docker_client)


def _run(client: docker.DockerClient, image: str, command: list[str]) -> str:
    """Run ``command`` in a throw-away container with no network; return stdout."""
    out = client.containers.run(
        image, command, network_mode="none", remove=True, stdout=True, stderr=False
    )
    return out.decode()


def test_debian_mirror_comes_from_apt_config() -> None:
    mirror = debian_mirror()
    assert mirror.startswith(("http://", "https://", "file:")), mirror


def test_debian_mirror_reads_both_apt_formats(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    sources = tmp_path / "sources.list.d" / "debian.sources"
    sources.write_text(
        "Types: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n\n"
        "# a comment\nTypes: deb-src deb\nURIs: http://mirror.example/debian\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert debian_mirror(tmp_path) == "http://mirror.example/debian"

    sources.unlink()
    (tmp_path / "sources.list").write_text(
        "deb http://security.example/debian-security bookworm-security main\n"
        "deb [signed-by=/k.gpg] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror(tmp_path) == "http://old.example/debian"

    (tmp_path / "sources.list").write_text("")
    with pytest.raises(RuntimeError, match="no Debian mirror"):
        debian_mirror(tmp_path)


def test_engine_has_no_bridge_network(docker_client: docker.DockerClient) -> None:
    # dockerd --bridge=none creates no default "bridge" network; only the
    # built-in "host" and "none" remain.
    names = {n.name for n in docker_client.networks.list()}
    assert "bridge" not in names, names
    assert "none" in names, names
    assert not [n for n in docker_client.networks.list() if n.attrs.get("Driver") == "bridge"]


@pytest.mark.timeout(900)
def test_base_image_is_built_once_and_cached(
    docker_client: docker.DockerClient, base_image_id: str
) -> None:
    image = docker_client.images.get(DEFAULT_BASE_TAG)
    assert image.id == base_image_id
    assert image.labels.get(BASE_LABEL) == "bookworm"

    messages: list[str] = []
    start = time.monotonic()
    again = ensure_base_image(docker_client, progress=messages.append)
    assert again == base_image_id
    assert time.monotonic() - start < 2
    assert not any("debootstrap" in m for m in messages), messages

    version = _run(docker_client, DEFAULT_BASE_TAG, ["python3", "--version"])
    assert version.startswith("Python 3.11."), version
    assert _run(docker_client, DEFAULT_BASE_TAG, ["bash", "-c", "echo $BASH_VERSION"]).strip()


def test_container_without_network_has_only_loopback(
    docker_client: docker.DockerClient, base_image_id: str
) -> None:
    interfaces = _run(docker_client, base_image_id, ["ls", "/sys/class/net"]).split()
    assert interfaces == ["lo"]
    dev = _run(docker_client, base_image_id, ["cat", "/proc/net/dev"])
    names = [line.split(":")[0].strip() for line in dev.splitlines()[2:] if ":" in line]
    assert names == ["lo"], dev


def test_default_network_container_gets_only_loopback(
    docker_client: docker.DockerClient, base_image_id: str
) -> None:
    # Without a bridge, a container that does not ask for `--network none`
    # still starts (network mode "default"), but with no interface but lo.
    out = docker_client.containers.run(base_image_id, ["ls", "/sys/class/net"], remove=True)
    assert out.decode().split() == ["lo"]


@pytest.mark.timeout(900)
def test_sdk_image_builds_offline_and_is_cached(
    docker_client: docker.DockerClient, base_image_id: str
) -> None:
    # Start from scratch so that the build path itself is exercised.
    try:
        docker_client.images.remove(TEST_TAG, force=True)
    except docker.errors.ImageNotFound:
        pass

    requirements = [f"anthropic=={ANTHROPIC}"]
    # Fails the build unless its RUN steps see nothing but loopback.
    no_network = ['RUN test "$(ls /sys/class/net)" = lo']
    first: list[str] = []
    image_id = build_image(
        docker_client,
        TEST_TAG,
        requirements=requirements,
        extra_dockerfile_lines=no_network,
        progress=first.append,
    )
    assert any(m.startswith("Step ") for m in first), first
    image = docker_client.images.get(TEST_TAG)
    assert image.id == image_id
    assert image.labels.get(HASH_LABEL)

    second: list[str] = []
    again = build_image(
        docker_client,
        TEST_TAG,
        requirements=requirements,
        extra_dockerfile_lines=no_network,
        progress=second.append,
    )
    assert again == image_id
    assert not any(m.startswith(("Step ", "building")) for m in second), second
    assert docker_client.images.get(TEST_TAG).attrs["Created"] == image.attrs["Created"]

    out = _run(
        docker_client,
        TEST_TAG,
        ["/opt/venv/bin/python", "-c", "import anthropic; print(anthropic.__version__)"],
    )
    assert out.strip() == ANTHROPIC
    # The venv is on PATH, so plain `python` is the venv's.
    prefix = _run(docker_client, TEST_TAG, ["python", "-c", "import sys; print(sys.prefix)"])
    assert prefix.strip() == "/opt/venv"


def test_no_containers_left_behind(docker_client: docker.DockerClient) -> None:
    leftovers = [
        c.name
        for c in docker_client.containers.list(all=True)
        if c.image.tags and set(c.image.tags) & {TEST_TAG, DEFAULT_BASE_TAG}
    ]
    assert leftovers == []
