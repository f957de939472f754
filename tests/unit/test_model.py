from datetime import datetime, timezone

import pytest

from bae.console import ago, duration
from bae.errors import Invalid
from bae.model import hostname, parse_target, slug, validate_name


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


def test_slug_and_hostname_of_default_and_other_deployments():
    assert slug("shop", "default") == "shop" and parse_target(slug("shop", "default")) == ("shop", "default")
    assert slug("shop", "api") == "shop/api" and parse_target("shop/api") == ("shop", "api")
    assert hostname("shop", "default", "bae.localhost") == "shop.bae.localhost"
    assert hostname("shop", "api", "bae.localhost") == "api.shop.bae.localhost"


def test_ages_as_ps_and_releases_show_them():
    assert [duration(s) for s in (-3, 0, 59, 60, 3599, 3600, 86399, 86400 * 3)] == \
        ["0s", "0s", "59s", "1m", "59m", "1h", "23h", "3d"]
    now = datetime(2026, 11, 25, 10, 0, tzinfo=timezone.utc)
    assert ago("2026-11-25T09:58:00+00:00", now) == "2m ago" and ago(None) == ""
