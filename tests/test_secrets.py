"""Secrets come from env vars or owner-only files and never print themselves."""

from __future__ import annotations

import pytest

from jupyter_cma.anthropic_api import Secret, SecretFileError, load_secret


def test_env_var_and_file_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("CMA_TEST_KEY", "from-env")
    assert load_secret("CMA_TEST_KEY", None).reveal() == "from-env"
    f = tmp_path / "key"
    f.write_text("from-file\n")
    f.chmod(0o600)
    secret = load_secret("CMA_TEST_KEY", str(f))
    assert secret.reveal() == "from-file"
    assert secret.source == f"file:{f}"


def test_missing_secret_is_none(monkeypatch):
    monkeypatch.delenv("CMA_TEST_KEY", raising=False)
    assert load_secret("CMA_TEST_KEY", None) is None


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_readable_by_others_is_refused(tmp_path, mode):
    f = tmp_path / "key"
    f.write_text("value")
    f.chmod(mode)
    with pytest.raises(SecretFileError, match="chmod 600"):
        load_secret(None, str(f))


def test_empty_or_missing_file_is_refused(tmp_path):
    f = tmp_path / "key"
    f.write_text("  \n")
    f.chmod(0o600)
    with pytest.raises(SecretFileError, match="empty"):
        load_secret(None, str(f))
    with pytest.raises(SecretFileError, match="cannot read"):
        load_secret(None, str(tmp_path / "absent"))


def test_secret_never_prints_its_value():
    secret = Secret("sk-ant-very-secret", "env:X")
    assert "sk-ant-very-secret" not in repr(secret)
    assert "sk-ant-very-secret" not in str(secret)
    assert "sk-ant-very-secret" not in f"{secret} {[secret]}"
