"""Logins for the web page: HTTP basic auth against scrypt password hashes in a file the lab's admin writes.

The file (``--auth-file`` or ``$WBC_APP_AUTH_FILE``) holds one ``name:hash`` line per login, written by
``wbc app-login NAME --auth-file FILE`` (the password is prompted for, never an argument that shows in ``ps``). A hash
is ``scrypt$<n>$<r>$<p>$<salt>$<key>`` (hashlib's scrypt, RFC 7914; salt and key in base64). ``wbc app`` on a
loopback address needs none; bound to any other address it refuses to start without one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from pathlib import Path

from wbc._io import atomic_write_bytes
from wbc.errors import WBCError

AUTH_FILE_VARIABLE = "WBC_APP_AUTH_FILE"
SCRYPT_COST = (2**14, 8, 1)
"""scrypt's n, r, p: about 16 MB and a few tens of milliseconds per check."""


class AuthConfigError(WBCError):
    """The logins file is missing, unreadable or malformed, or a public address has none."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hash_password(password: str) -> str:
    n, r, p = SCRYPT_COST
    salt = secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches the hash ``encoded`` (a constant-time comparison)."""
    try:
        scheme, n, r, p, salt, key = encoded.split("$")
        expected = base64.b64decode(key)
        actual = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return scheme == "scrypt" and hmac.compare_digest(actual, expected)


def read_logins(path: str | os.PathLike) -> dict[str, str]:
    """``{name: hash}`` from the logins file. Raises :class:`AuthConfigError` naming the file (and line) when it is
    missing, unreadable, malformed or empty."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise AuthConfigError(f"{path}: cannot read the logins file ({error.strerror or error}); "
                              f"create it with: wbc app-login NAME --auth-file {path}") from None
    logins = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        name, separator, encoded = line.partition(":")
        if not separator or not name or not encoded.startswith("scrypt$") or encoded.count("$") != 5:
            raise AuthConfigError(f"{path}, line {number}: not a 'name:scrypt$...' login; write logins with wbc app-login")
        logins[name] = encoded
    if not logins:
        raise AuthConfigError(f"{path}: no logins in the file; add one with: wbc app-login NAME --auth-file {path}")
    return logins


def add_login(path: str | os.PathLike, name: str, password: str) -> bool:
    """Add login ``name`` (or replace its password) in the logins file, written whole and readable by its owner only.
    Returns True when ``name`` was new."""
    if not name or ":" in name or any(c.isspace() for c in name):
        raise AuthConfigError(f"login name {name!r}: use letters, digits and punctuation other than ':', no spaces")
    if not password:
        raise AuthConfigError("an empty password is not a password")
    path = Path(path)
    logins = read_logins(path) if path.exists() else {}
    new = name not in logins
    logins[name] = hash_password(password)
    text = "".join(f"{user}:{encoded}\n" for user, encoded in logins.items()).encode()
    atomic_write_bytes(path, lambda handle: handle.write(text))
    os.chmod(path, 0o600)
    return new
