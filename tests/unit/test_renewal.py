"""The renewal decision (router/renewal.py), with plain dataclasses and no CA."""

from datetime import datetime, timedelta, timezone

from bae.model import Certificate, TlsState
from router.renewal import Wanted, backoff, next_attempt, plan, renew_at

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def cert(name, source="acme", dep=1, names=("shop.bae.localhost",), start=-10, days=90):
    begin = NOW + timedelta(days=start)
    return Certificate(name, dep, source, tuple(names), "CA", "ab", name * 8, begin.isoformat(),
                       (begin + timedelta(days=days)).isoformat())


def wanted(*certs, auto=True, hosts=("shop.bae.localhost",), **state):
    return Wanted(1, "shop", tuple(hosts), TlsState(1, auto=auto, **state), tuple(certs))


def test_nothing_when_automatic_certificates_are_off():
    assert plan([wanted(auto=False)], [], NOW).orders == ()


def test_a_new_order_covers_every_hostname_but_wildcards():
    (order,) = plan([wanted(hosts=("shop.bae.localhost", "www.shop.example", "*.shop.example"))], [], NOW).orders
    assert order.hostnames == ("shop.bae.localhost", "www.shop.example") and order.reason == "new"


def test_renewal_when_a_third_of_the_lifetime_is_left():
    young = cert("a", start=-10, days=90)  # 80 days left: renews at day 60
    result = plan([wanted(young)], [], NOW)
    assert result.orders == () and result.next_check == renew_at(young) == NOW + timedelta(days=50)
    old = cert("b", start=-61, days=90)  # 29 days left < 30
    (order,) = plan([wanted(old)], [], NOW).orders
    assert order.reason == "renewal due" and order.replaces == ("b",)


def test_the_cas_renewal_information_can_bring_it_forward():
    w = Wanted(1, "shop", ("shop.bae.localhost",), TlsState(1, auto=True), (cert("a"),), NOW - timedelta(minutes=1))
    assert plan([w], [], NOW).orders[0].reason == "renewal due"


def test_an_added_hostname_needs_a_new_certificate():
    (order,) = plan([wanted(cert("a"), hosts=("shop.bae.localhost", "www.shop.example"))], [], NOW).orders
    assert order.reason == "hostnames changed" and order.replaces == ("a",)


def test_uploaded_certificates_win():
    mine = cert("u", source="uploaded", names=("www.shop.example",))
    (order,) = plan([wanted(mine, hosts=("shop.bae.localhost", "www.shop.example"))], [], NOW).orders
    assert order.hostnames == ("shop.bae.localhost",) and order.replaces == ()
    platform = cert("p", source="uploaded", dep=None, names=("*.bae.localhost",))
    assert plan([wanted(mine, hosts=("shop.bae.localhost", "www.shop.example"))], [platform], NOW).orders == ()
    expired = cert("x", source="uploaded", names=("www.shop.example",), start=-100, days=90)
    assert plan([wanted(expired, hosts=("www.shop.example",))], [], NOW).orders[0].hostnames == ("www.shop.example",)


def test_backoff_is_stored_state_and_respected():
    until = NOW + timedelta(minutes=4)
    result = plan([wanted(failures=3, not_before=until.isoformat())], [], NOW)
    assert result.orders == () and result.next_check == until and result.waiting[1][0] == "new"
    assert plan([wanted(failures=3, not_before=(NOW - timedelta(seconds=1)).isoformat())], [], NOW).orders


def test_backoff_doubles_up_to_the_maximum_and_honours_retry_after():
    assert [backoff(n, 60, 3600) for n in range(0, 8)] == [0, 60, 120, 240, 480, 960, 1920, 3600]
    assert next_attempt(NOW, 1, 60, 3600) == NOW + timedelta(seconds=60)
    later = NOW + timedelta(hours=1)
    assert next_attempt(NOW, 1, 60, 3600, later) == later
    assert backoff(10_000, 1, 5) == 5


def test_next_check_is_the_earliest_among_deployments():
    a = Wanted(1, "a", ("a.bae.localhost",), TlsState(1, auto=True), (cert("a", names=("a.bae.localhost",), start=-10),))
    b = Wanted(2, "b", ("b.bae.localhost",), TlsState(2, auto=True), (cert("b", dep=2, names=("b.bae.localhost",), start=-50),))
    assert plan([a, b], [], NOW).next_check == NOW + timedelta(days=10)
