import pytest

from bae.errors import Invalid
from bae.model import parse_target, validate_name


@pytest.mark.parametrize("name", ["a", "shop", "my-api", "a1", "x" * 30, "a-b-c"])
def test_valid_names(name):
    assert validate_name("app", name) == name


@pytest.mark.parametrize("name", ["", "A", "1app", "-a", "a-", "a--b", "x" * 31, "a_b", "a.b", "../x",
                                  "%2e%2e", "a b", "'a'", "a/b", "é"])
def test_invalid_names_say_the_rule(name):
    with pytest.raises(Invalid) as err:
        validate_name("app", name)
    assert "App names are a lowercase letter" in err.value.hint


def test_parse_target():
    assert parse_target("shop") == ("shop", "default")
    assert parse_target("shop/worker") == ("shop", "worker")
    with pytest.raises(Invalid):
        parse_target("shop/")
    with pytest.raises(Invalid):
        parse_target("shop/a/b")
