import pytest

from bae.errors import Invalid
from gitserver.session import parse_repo_path


@pytest.mark.parametrize("path,expected", [
    ("/shop.git", ("shop", "default")),
    ("shop.git", ("shop", "default")),
    ("/shop/worker.git", ("shop", "worker")),
    ("shop/worker.git", ("shop", "worker")),
    ("/shop", ("shop", "default")),
])
def test_accepted_paths(path, expected):
    assert parse_repo_path(path) == expected


@pytest.mark.parametrize("path", [
    "/../etc.git", "../shop.git", "/shop/../x.git", "//shop.git", "%2e%2e/x.git",
    "/shop.git/", "'shop'.git", "/sh op.git", "/" + "a" * 200 + ".git", "", "/", "/a/b/c.git",
    "/Shop.git", "/shop/.git",
])
def test_refused_paths(path):
    with pytest.raises(Invalid):
        parse_repo_path(path)
