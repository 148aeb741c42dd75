"""The dev stack's free ports are distinct: picked one by one with each socket
closed at once, about one set in a hundred held a port twice and the stack
failed to start ("Address already in use")."""

from __future__ import annotations

from dataclasses import astuple

from iclaim_ops.devstack.stack import Ports, free_port, free_ports


def test_free_ports_are_never_given_twice() -> None:
    for _ in range(300):
        ports = astuple(Ports.free())
        assert len(set(ports)) == len(ports)
        assert all(1024 <= p <= 65535 for p in ports)


def test_every_test_helper_picks_ports_the_same_way() -> None:
    """Tests ask for one, two or three ports at a time (free_ports): distinct too."""
    for _ in range(100):
        ports = free_ports(40)
        assert len(set(ports)) == 40
    assert 1024 <= free_port() <= 65535
