"""Parse and check SSH public keys; compute OpenSSH-style fingerprints.

Called by the ``keys:add`` command (to validate what a user hands in) and by
the SSH policy (to fingerprint the key a client offers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

import paramiko
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from bae.errors import Invalid
from bae.model import PublicKey

__all__ = ["parse_public_key", "fingerprint", "MIN_RSA_BITS"]

MIN_RSA_BITS = 2048
_ACCEPTED = {
    "ssh-ed25519": "ed25519",
    "ecdsa-sha2-nistp256": "ecdsa",
    "ecdsa-sha2-nistp384": "ecdsa",
    "ecdsa-sha2-nistp521": "ecdsa",
    "ssh-rsa": "rsa",
}
_HOW = "Pass the public key (the .pub file ssh-keygen wrote, one line starting with ssh-ed25519, ecdsa-sha2-… or ssh-rsa)."


def fingerprint(blob: bytes) -> str:
    """``SHA256:…`` as ``ssh-keygen -l`` prints it, for the key's wire-format blob."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def parse_public_key(text: str) -> PublicKey:
    """Return the one public key in ``text``, or raise Invalid saying what is wrong."""
    if "PRIVATE KEY" in text:
        raise Invalid(
            "this is a private key; never hand your private key to anyone",
            "Pass the matching public key instead (usually the same path with .pub added).",
        )
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    if not lines:
        raise Invalid("no public key given (the input is empty)", _HOW)
    if len(lines) > 1:
        raise Invalid(f"the input holds {len(lines)} lines; give exactly one public key", "Add keys one at a time.")
    parts = lines[0].split(None, 2)
    kind = parts[0]
    if kind not in _ACCEPTED:
        if kind in ("ssh-dss",) or kind.startswith("sk-") or kind.endswith("-cert-v01@openssh.com"):
            raise Invalid(f"key type {kind} is not accepted", "Use an ed25519, ecdsa or rsa (2048 bits or more) key.")
        raise Invalid("the input is not an SSH public key", _HOW)
    if len(parts) < 2:
        raise Invalid(f"the {kind} key has no key data after its type", _HOW)
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("the key data is not valid base64; the key is damaged or cut short", _HOW) from None
    damaged = Invalid(f"the {kind} key data is damaged or cut short (ssh-keygen -l would refuse it too)",
                      "Copy the whole line of the .pub file again; check it with: ssh-keygen -l -f KEY.pub")
    try:
        # Every field of the blob, in full, with nothing after it: the length of an
        # ed25519 key, an ecdsa point on its named curve, a usable RSA modulus.
        load_ssh_public_key(b"%s %s" % (kind.encode(), base64.b64encode(blob)))
        key = paramiko.PKey.from_type_string(kind, blob)
    except Exception:  # both libraries raise several types for malformed blobs
        raise damaged from None
    if key.get_name() != kind and not (kind == "ssh-rsa" and key.get_name().startswith("rsa-")):
        raise Invalid(f"the key says it is {kind} but its data is a {key.get_name()} key", _HOW)
    bits = key.get_bits()
    if _ACCEPTED[kind] == "rsa" and bits < MIN_RSA_BITS:
        raise Invalid(
            f"the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required",
            "Generate a stronger key: ssh-keygen -t ed25519",
        )
    comment = parts[2] if len(parts) > 2 else ""
    return PublicKey(
        fingerprint=fingerprint(blob), kind=_ACCEPTED[kind], bits=bits, comment=comment[:200],
        openssh=f"{kind} {parts[1]}" + (f" {comment[:200]}" if comment else ""),
    )
