"""Offline image builds against the real Docker engine.

These need an engine started by ``scripts/docker-engine.sh`` (no bridge
network) and, on the host only, the Debian mirror and the package index.
The base image is shared with real use and built only when missing.
"""

from __future__ import annotations

from pathlib import Path

import docker
import docker.errors
import pytest

from jupyter_cma.sandboxes.image import (
    BASE_LABEL,
    BASE_PACKAGES_LABEL,
    DEFAULT_BASE_TAG,
    HASH_LABEL,
    ImageSettings,
    apt_packages,
    build_sandbox_image,
    debian_mirror,
    ensure_base_image,
)

TEST_TAG = "jupyter-cma-test:offline"
ANTHROPIC = "2.10.0"


@pytest.fixture(scope="module")
def base_image_id(docker_client: docker.DockerClient) -> str:
    # Debootstrapping takes about a minute when the image is missing.
    return ensure_base_image(docker_client, packages=apt_packages())


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
    again = ensure_base_image(docker_client, packages=apt_packages(), progress=lambda m, **_: messages.append(m))
    assert again == base_image_id
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
def test_sandbox_image_builds_offline_with_extensions_and_is_cached(
    docker_client: docker.DockerClient, base_image_id: str, tmp_path: Path
) -> None:
    # Start from scratch so that the build path itself is exercised: the sandbox image with an extra
    # wheel, then a Dockerfile of the user's own FROM it.
    for tag in (TEST_TAG, f"{TEST_TAG}-base"):
        try:
            docker_client.images.remove(tag, force=True)
        except docker.errors.ImageNotFound:
            pass
    own = tmp_path / "Dockerfile.mine"
    own.write_text(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER root\n"
        'RUN test "$(ls /sys/class/net)" = lo && echo extended > /opt/cma/extended\nUSER agent\n'
    )
    settings = ImageSettings(tag=TEST_TAG, extra_pip_packages=["six==1.16.0"], dockerfile=str(own))

    first: list[tuple[str, int | None, int | None]] = []
    image_id = build_sandbox_image(docker_client, settings, progress=lambda m, step=None, total=None: first.append((m, step, total)))
    assert any(total and step is not None for _, step, total in first), first  # the bar gets steps of a known total
    assert sum(1 for m, _, _ in first if m.startswith("built ")) == 2, first  # ours, then the user's on top
    image = docker_client.images.get(TEST_TAG)
    assert image.id == image_id and image.labels.get(HASH_LABEL)

    second: list[str] = []
    again = build_sandbox_image(docker_client, settings, progress=lambda m, **_: second.append(m))
    assert again == image_id
    assert not any(m.startswith(("building", "downloading")) for m in second), second
    assert docker_client.images.get(TEST_TAG).attrs["Created"] == image.attrs["Created"]

    script = (
        "import anthropic, six, pwd, os, shutil, cma_sandbox.worker; "
        "print(anthropic.__version__, six.__version__, pwd.getpwuid(os.getuid()).pw_name, "
        "all(shutil.which(t) for t in ('bash', 'git', 'curl', 'jq', 'rg', 'ps')), open('/opt/cma/extended').read().strip())"
    )
    out = docker_client.containers.run(TEST_TAG, ["-c", script], entrypoint="python", network_mode="none", remove=True)
    assert out.decode().split() == [ANTHROPIC, "1.16.0", "agent", "True", "extended"]


def test_the_dockerfile_holds_the_one_list_of_command_line_tools() -> None:
    packages = apt_packages()
    assert {"bash", "ca-certificates", "curl", "git", "ripgrep"} <= set(packages)
    base = docker.from_env()
    try:
        labels = base.images.get(DEFAULT_BASE_TAG).labels
    finally:
        base.close()
    # The offline base was bootstrapped with exactly that list (plus Python).
    assert set(packages) <= set(labels[BASE_PACKAGES_LABEL].split())


def test_no_containers_left_behind(docker_client: docker.DockerClient) -> None:
    leftovers = [
        c.name
        for c in docker_client.containers.list(all=True)
        if c.image.tags and set(c.image.tags) & {TEST_TAG, f"{TEST_TAG}-base", DEFAULT_BASE_TAG}
    ]
    assert leftovers == []
