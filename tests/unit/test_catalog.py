"""Buildpack specs a user may set: git URLs must name hosts on the public internet."""

import pytest

from bae.errors import Invalid
from buildpacks.catalog import public_address, validate_spec


@pytest.mark.parametrize("url", [
    "https://127.0.0.1/x.git", "https://localhost:8443/x.git", "git://10.0.0.1/x", "https://172.16.3.4/x",
    "https://192.168.1.1/x.git", "https://169.254.169.254/latest", "https://100.64.0.1/x", "https://0.0.0.0/x",
    "https://2130706433/x.git", "https://0x7f000001/x.git", "https://127.1/x.git",
])
def test_private_and_loopback_hosts_refused_for_users(url):
    with pytest.raises(Invalid, match="not on the public internet"):
        validate_spec(url, admin=False)
    assert validate_spec(url, admin=True) == url  # admins may name hosts on their own network


def test_public_address_is_pinned():
    assert public_address("https://8.8.8.8/x.git") == ("8.8.8.8", 443, "8.8.8.8")
    assert public_address("git://1.1.1.1:9999/x") == ("1.1.1.1", 9999, "1.1.1.1")
