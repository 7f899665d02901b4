"""Per-session SSH keys: ed25519, written 0600 before any instance exists."""

from __future__ import annotations

import os
from pathlib import Path

from gpushopper.model.errors import UsageError


def generate_session_key(keys_dir: Path, session_id: str, comment: str) -> tuple[Path, str]:
    """Create ``keys/<session>/id_ed25519`` (0600) and ``.pub``; return (path, public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = keys_dir / session_id
    from gpushopper.state.fs import private_dir

    private_dir(folder)
    os.chmod(folder, 0o700)
    os.chmod(keys_dir, 0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    public_line = f"{public} {comment}"
    path = folder / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
        handle.flush()
        os.fsync(handle.fileno())
    pub_path = folder / "id_ed25519.pub"
    pub_path.write_text(public_line + "\n", encoding="utf-8")
    os.chmod(pub_path, 0o644)
    return path, public_line


def public_key_for(private_path: Path) -> str:
    """The public half of an existing key: ``<path>.pub`` if present, else derived."""
    pub = Path(str(private_path) + ".pub")
    if pub.is_file():
        return pub.read_text(encoding="utf-8").strip()
    if not private_path.is_file():
        raise UsageError(f"SSH key {private_path} does not exist")
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(
            f"cannot read SSH key {private_path} ({exc}); give an unencrypted OpenSSH key or its .pub"
        ) from None
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )


def load_private_key(path: Path):  # noqa: ANN201 - paramiko type
    """A paramiko key object for ``path`` (ed25519, ECDSA or RSA)."""
    import paramiko

    errors = []
    for cls in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return cls.from_private_key_file(str(path))
        except (paramiko.SSHException, ValueError) as exc:
            errors.append(str(exc))
    raise UsageError(f"cannot load SSH key {path}: unsupported or encrypted key")
