"""Every failure of the ACME library and of the network becomes one AcmeError with a reason
(translated once, in router/acme.py), and a rate limit defers the next order by an hour."""

from datetime import datetime, timezone

import pytest
import requests
from acme import errors as acme_errors
from acme import messages

from router.acme import AcmeError, _translated

DIRECTORY = "https://ca.invalid/dir"


def translate(exc: BaseException) -> AcmeError:
    with pytest.raises(AcmeError) as caught:
        with _translated(DIRECTORY):
            raise exc
    assert caught.value.message and "Traceback" not in caught.value.message
    return caught.value


def test_rate_limit_defers_by_an_hour():
    err = translate(messages.Error(typ="urn:ietf:params:acme:error:rateLimited", detail="too many certificates"))
    assert "rate limit" in err.message and "too many certificates" in err.message
    assert (err.retry_after - datetime.now(timezone.utc)).total_seconds() > 3500


@pytest.mark.parametrize("exc, words", [
    (messages.Error(typ="urn:ietf:params:acme:error:rejectedIdentifier", detail="forbidden name"), "refused the order"),
    (acme_errors.ValidationError([]), "could not validate"),
    (acme_errors.TimeoutError(), "did not finish the order in time"),
    (requests.exceptions.SSLError("bad cert"), "does not trust"),
    (requests.exceptions.ConnectionError("refused"), "cannot be reached"),
    (requests.exceptions.ReadTimeout("slow"), "cannot be reached"),
    (requests.exceptions.InvalidURL("what"), "answered unexpectedly"),
    (acme_errors.ClientError("odd response"), "answered unexpectedly"),
    (acme_errors.BadNonce("n", "e"), "answered unexpectedly"),
    (ValueError("not json"), "answered unexpectedly"),
])
def test_library_and_network_errors_are_translated(exc, words):
    assert words in translate(exc).message


def test_our_own_errors_and_bugs_pass_through():
    with pytest.raises(AcmeError, match="mine"):
        with _translated(DIRECTORY):
            raise AcmeError("mine")
    with pytest.raises(KeyError):
        with _translated(DIRECTORY):
            raise KeyError("a bug stays a bug")
