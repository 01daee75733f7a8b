"""!vault values: decrypted with the password file, redacted as no_log values, refused without a password."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.controller.config import Config
from kiln.controller.stepfiles.compile import compile_role, validate_roles
from kiln.controller.vault import PASSWORD_FILE_ENV, VaultError, decrypt

ANSIBLE_VAULT = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "ansible-vault"


def ansible_encrypted(tmp: Path, secret: str, password: str) -> str:
    """The value as ansible-vault itself writes it (the reference implementation)."""
    if not ANSIBLE_VAULT.exists() and not shutil.which("ansible-vault"):
        pytest.skip("ansible-vault (ansible-core, a test extra) is not installed")
    pw = tmp / "pw"
    pw.write_text(password + "\n")
    done = subprocess.run(
        [
            str(ANSIBLE_VAULT if ANSIBLE_VAULT.exists() else "ansible-vault"),
            "encrypt_string",
            "--vault-password-file",
            str(pw),
            secret,
            "--name",
            "db_password",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def make_role(root: Path, defaults: str) -> None:
    role = root / "roles" / "db"
    (role / "tasks").mkdir(parents=True)
    (role / "defaults").mkdir()
    (role / "tasks" / "main.yml").write_text("- copy:\n    content: '{{ db_password }}'\n    dest: /etc/db.pw\n")
    (role / "defaults" / "main.yml").write_text(defaults)


def test_vault_value_is_decrypted_and_redacted(tmp_path, monkeypatch):
    defaults = ansible_encrypted(tmp_path, "s3cret-value", "hunter2")
    make_role(tmp_path, defaults)
    monkeypatch.setenv(PASSWORD_FILE_ENV, str(tmp_path / "pw"))
    compiled = compile_role(tmp_path, "db", "local", Config(path=tmp_path / "kiln.yaml"))
    assert compiled.variables["db_password"] == "s3cret-value"
    assert "s3cret-value" in compiled.no_log_values


def test_vault_value_without_password_is_refused_at_its_place(tmp_path, monkeypatch):
    defaults = ansible_encrypted(tmp_path, "s3cret-value", "hunter2")
    make_role(tmp_path, defaults)
    monkeypatch.delenv(PASSWORD_FILE_ENV, raising=False)
    found = validate_roles(tmp_path, ["db"], Config(path=tmp_path / "kiln.yaml"))
    assert [(Path(d.file).name, d.line, d.column) for d in found] == [("main.yml", 1, 14)]
    assert "no vault password: give --vault-password-file" in found[0].message


def test_wrong_password_is_refused(tmp_path):
    text = ansible_encrypted(tmp_path, "x", "right").split("!vault |", 1)[1]
    with pytest.raises(VaultError, match="does not decrypt"):
        decrypt(text, b"wrong")
    assert decrypt(text, b"right") == "x"
