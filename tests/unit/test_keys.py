import subprocess

import pytest

from bae.errors import Invalid
from gitserver.keys import parse_public_key


def keygen(tmp_path, *args):
    path = tmp_path / "key"
    subprocess.run(["ssh-keygen", "-q", "-N", "", "-C", "me@host", "-f", str(path), *args], check=True)
    return path


@pytest.mark.parametrize("args,kind", [
    (["-t", "ed25519"], "ed25519"),
    (["-t", "ecdsa", "-b", "256"], "ecdsa"),
    (["-t", "ecdsa", "-b", "521"], "ecdsa"),
    (["-t", "rsa", "-b", "2048"], "rsa"),
])
def test_accepted_keys_with_openssh_fingerprints(tmp_path, args, kind):
    path = keygen(tmp_path, *args)
    key = parse_public_key((tmp_path / "key.pub").read_text())
    expected = subprocess.run(["ssh-keygen", "-lf", str(path) + ".pub"], capture_output=True, text=True).stdout.split()[1]
    assert key.kind == kind
    assert key.fingerprint == expected
    assert key.comment == "me@host"


def test_short_rsa_refused(tmp_path):
    keygen(tmp_path, "-t", "rsa", "-b", "1024")
    with pytest.raises(Invalid, match="1024 bits; at least 2048"):
        parse_public_key((tmp_path / "key.pub").read_text())


def test_private_key_refused(tmp_path):
    path = keygen(tmp_path, "-t", "ed25519")
    with pytest.raises(Invalid, match="private key"):
        parse_public_key(path.read_text())


@pytest.mark.parametrize("text,message", [
    ("", "empty"),
    ("hello world", "not an SSH public key"),
    ("ssh-ed25519 !!!notbase64", "not valid base64"),
    ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5", "damaged"),
    ("ssh-dss AAAAB3NzaC1kc3M=", "not accepted"),
    ("ssh-ed25519", "no key data"),
])
def test_garbage_refused(text, message):
    with pytest.raises(Invalid, match=message):
        parse_public_key(text)


def test_two_keys_refused(tmp_path):
    keygen(tmp_path, "-t", "ed25519")
    line = (tmp_path / "key.pub").read_text()
    with pytest.raises(Invalid, match="2 lines"):
        parse_public_key(line + line)


def test_type_mismatch_refused(tmp_path):
    keygen(tmp_path, "-t", "ed25519")
    _, data, _ = (tmp_path / "key.pub").read_text().split()
    with pytest.raises(Invalid):
        parse_public_key(f"ssh-rsa {data}")


@pytest.mark.parametrize("args", [["-t", "ed25519"], ["-t", "ecdsa", "-b", "384"], ["-t", "rsa", "-b", "3072"]])
def test_every_cut_or_padded_blob_refused(tmp_path, args):
    import base64

    keygen(tmp_path, *args)
    kind, data = (tmp_path / "key.pub").read_text().split()[:2]
    blob = base64.b64decode(data)
    damaged = [blob[:-1], blob[: len(blob) // 2], blob + b"\0\0\0\0"]
    if kind.startswith("ecdsa"):
        damaged.append(blob[:-1] + bytes([blob[-1] ^ 1]))  # a point that is not on the curve
    for bad in damaged:
        with pytest.raises(Invalid, match="damaged or cut short"):
            parse_public_key(f"{kind} {base64.b64encode(bad).decode()}")
