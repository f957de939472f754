"""The router's nginx configuration, rendered without nginx: how long idle connections to units are kept."""

from pathlib import Path

import pytest

from bae import config
from bae.errors import ConfigError
from bae.model import Endpoint, Route
from router import nginx

ROUTES = [Route("shop", "default", ("shop.bae.localhost",), (Endpoint("web.1", "172.17.0.5:5000"),))]


def rendered(settings: config.Router) -> str:
    return nginx.render(ROUTES, prefix=Path("/r"), logs=Path("/l"), listen="127.0.0.1:80", settings=settings,
                        user=None, tls=None)


def test_idle_connections_to_units_close_before_the_app_servers_close_them():
    # gunicorn closes an idle keep-alive connection after 2 s (Node.js after 5 s): nginx must let
    # go of it first, or a POST sent on it as the unit closes it gets a 502 (nginx retries only
    # idempotent requests)
    text = rendered(config.Router())
    assert "    keepalive 32; keepalive_timeout 1000ms;" in text
    assert "keepalive_timeout 250ms;" in rendered(config.Router(keepalive_timeout=0.25))


def test_a_timeout_of_zero_or_less_is_refused_naming_the_key(tmp_path):
    path = tmp_path / "bae.toml"
    path.write_text("[router]\nkeepalive_timeout = 0\n")
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert "router.keepalive_timeout" in err.value.message and "greater than 0" in err.value.hint
