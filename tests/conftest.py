"""Shared fixtures. Network tests stand on the lab fixtures here: every namespace they make
is uniquely named and removed after the test, and the session checks none is left."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from aoe.lab import Lab, created_namespaces, list_netns
from aoe.lab.pair import TwoHosts, make_two_hosts, netns_unavailable_reason

NETNS_SKIP_REASON = netns_unavailable_reason()
needs_netns = pytest.mark.skipif(NETNS_SKIP_REASON is not None, reason=NETNS_SKIP_REASON or "")


def require_netns() -> None:
    """Skip the calling test (with the reason) when namespaces cannot be made."""
    if NETNS_SKIP_REASON is not None:
        pytest.skip(NETNS_SKIP_REASON)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh Lab, torn down (namespaces and processes) after the test."""
    require_netns()
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def two_hosts(request: pytest.FixtureRequest, lab: Lab) -> TwoHosts:
    """Target and initiator on one cable at MTU 1500. For another MTU, parametrize
    indirectly: ``@pytest.mark.parametrize("two_hosts", [1500, 9000], indirect=True)``."""
    mtu = getattr(request, "param", 1500)
    return make_two_hosts(lab, mtu=mtu)


@pytest.fixture
def two_hosts_jumbo(lab: Lab) -> TwoHosts:
    """Like two_hosts, at MTU 9000."""
    return make_two_hosts(lab, mtu=9000)


@pytest.fixture(params=[1500, 9000], ids=["mtu1500", "mtu9000"])
def two_hosts_any_mtu(request: pytest.FixtureRequest, lab: Lab) -> TwoHosts:
    """Runs the test once at MTU 1500 and once at MTU 9000."""
    return make_two_hosts(lab, mtu=request.param)


@pytest.fixture
def lab_factory() -> Iterator[Callable[..., Lab]]:
    """Make extra Labs within one test (all closed afterwards)."""
    require_netns()
    labs: list[Lab] = []

    def make(prefix: str | None = None) -> Lab:
        labs.append(Lab(prefix))
        return labs[-1]

    yield make
    for one in labs:
        one.close()


@pytest.fixture(scope="session", autouse=True)
def _no_lab_namespace_left() -> Iterator[None]:
    """At the end of the run, fail loudly if a namespace this run made still exists."""
    yield
    left = sorted(created_namespaces() & set(list_netns()))
    if left:
        pytest.fail(f"lab namespaces left behind by this test run: {left}", pytrace=False)
