"""The dev stack's credentials keyring: generated once, kept in the state directory (mode 0600)."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Final

from apptsync.cli.devstack.errors import DevStackError

DEV_KEY_ID: Final[str] = "dev"
KEY_BYTES: Final[int] = 32


def format_dev_keyring(key: bytes, key_id: str = DEV_KEY_ID) -> str:
    """`key_id:base64(key)`, the format of APPTSYNC_CREDENTIALS_KEYRING. Raises ValueError unless
    the key is 32 bytes."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"a credentials key is {KEY_BYTES} bytes, got {len(key)}")
    return f"{key_id}:{base64.b64encode(key).decode('ascii')}"


def load_or_create_dev_keyring(path: Path, *, random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """The keyring stored at `path`, creating it (0600, exclusive create) on first use.

    Keeping it means credentials stored by an earlier `dev up` still decrypt. Raises DevStackError
    when the file exists but is empty.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)
        text = path.read_text("utf-8").strip()
        if not text:
            raise DevStackError(f"the dev keyring file {path} is empty; delete it to generate a new one") from None
        return text
    keyring = format_dev_keyring(random_bytes(KEY_BYTES))
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(keyring + "\n")
    return keyring
