"""Ansible Vault values (``!vault |`` scalars): decrypted on the controller, kept out of every log.

The format is ``$ANSIBLE_VAULT;1.1;AES256`` (an optional fourth field is the vault id),
then the hex of ``hex(salt) \\n hex(hmac) \\n hex(ciphertext)``: keys from
PBKDF2-HMAC-SHA256 (10000 iterations, 80 bytes: AES key, HMAC key, CTR nonce), the
HMAC-SHA256 taken over the ciphertext, AES-256-CTR, PKCS#7 padding. The password is the
first line of the file ``--vault-password-file`` or ``ANSIBLE_VAULT_PASSWORD_FILE`` names.
"""

from __future__ import annotations

import binascii
import hmac
import os
from hashlib import sha256
from pathlib import Path

PASSWORD_FILE_ENV = "ANSIBLE_VAULT_PASSWORD_FILE"
HEADER = "$ANSIBLE_VAULT"


class VaultError(Exception):
    """Why a vault value cannot be decrypted (shown at the value's file:line:column)."""


class VaultSecret(str):
    """A decrypted vault value: a string that the compile treats as a no_log value."""


def password() -> bytes | None:
    """The vault password, from the file ``ANSIBLE_VAULT_PASSWORD_FILE`` names (None when unset)."""
    name = os.environ.get(PASSWORD_FILE_ENV, "").strip()
    if not name:
        return None
    path = Path(name).expanduser()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise VaultError(f"cannot read the vault password file {name}: {exc.strerror or exc}") from None
    if os.access(path, os.X_OK) and not path.is_dir():
        raise VaultError(
            f"the vault password file {name} is executable: kiln reads passwords, it does not run "
            "scripts for them (write the password into a plain file)"
        )
    line = text.splitlines()[0].strip() if text.strip() else b""
    if not line:
        raise VaultError(f"the vault password file {name} is empty")
    return line


def _derived_keys(secret: bytes, salt: bytes) -> bytes:
    """80 bytes of PBKDF2-HMAC-SHA256 (10000 iterations): the AES key, the HMAC key, the CTR nonce.

    cryptography is loaded here, not with the module: every compile asks whether a value is a VaultSecret, and
    a role without a !vault value (the common case) should not pay ~10 ms for it."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

    return PBKDF2HMAC(algorithm=hashes.SHA256(), length=80, salt=salt, iterations=10000).derive(secret)


def decrypt(text: str, secret: bytes | None = None) -> str:
    """The plaintext of one vault value; VaultError says why not (no password, wrong password, malformed)."""
    secret = secret if secret is not None else password()
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if not lines or not lines[0].startswith(HEADER + ";"):
        raise VaultError("a !vault value starts with $ANSIBLE_VAULT;1.1;AES256")
    fields = lines[0].split(";")
    if len(fields) < 3 or fields[1] not in ("1.1", "1.2") or fields[2] != "AES256":
        raise VaultError(f"unsupported vault format {lines[0]!r} (kiln reads $ANSIBLE_VAULT;1.1;AES256)")
    if secret is None:
        raise VaultError(
            f"a !vault value, and no vault password: give --vault-password-file FILE (or set {PASSWORD_FILE_ENV})"
        )
    try:
        envelope = binascii.unhexlify("".join(lines[1:])).decode("ascii")
        salt_hex, mac_hex, cipher_hex = envelope.split("\n")[:3]
        salt, mac, ciphertext = (binascii.unhexlify(x) for x in (salt_hex, mac_hex, cipher_hex))
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise VaultError("the !vault value is damaged (not the hex envelope ansible-vault writes)") from None
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    keys = _derived_keys(secret, salt)
    aes_key, mac_key, nonce = keys[:32], keys[32:64], keys[64:80]
    if not hmac.compare_digest(hmac.new(mac_key, ciphertext, sha256).digest(), mac):
        raise VaultError("the vault password does not decrypt this !vault value (HMAC mismatch)")
    decryptor = Cipher(algorithms.AES(aes_key), modes.CTR(nonce)).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
        return plain.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise VaultError("the !vault value decrypts to something that is not UTF-8 text") from None


def encrypt(plaintext: str, secret: bytes, salt: bytes | None = None) -> str:
    """A vault value as ansible-vault writes it (for tests and for ``kiln`` users' convenience)."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    salt = salt or os.urandom(32)
    keys = _derived_keys(secret, salt)
    aes_key, mac_key, nonce = keys[:32], keys[32:64], keys[64:80]
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.CTR(nonce)).encryptor()
    ciphertext = encryptor.update(padded) + encryptor.finalize()
    mac = hmac.new(mac_key, ciphertext, sha256).hexdigest()
    envelope = "\n".join([salt.hex(), mac, ciphertext.hex()]).encode("ascii").hex()
    return HEADER + ";1.1;AES256\n" + "\n".join(envelope[i : i + 80] for i in range(0, len(envelope), 80))
