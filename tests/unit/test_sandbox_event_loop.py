"""The sandbox runs on uvloop unless ICLAIM_EVENT_LOOP=asyncio, as the hub does."""

from __future__ import annotations

import pytest

from sandbox.__main__ import chosen_loop, main


def test_uvloop_by_default_asyncio_when_asked() -> None:
    assert chosen_loop({}) == "UVLOOP"
    assert chosen_loop({"ICLAIM_EVENT_LOOP": ""}) == "UVLOOP"
    assert chosen_loop({"ICLAIM_EVENT_LOOP": "asyncio"}) == "ASYNCIO"


def test_an_unknown_loop_is_an_unusable_argument(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ICLAIM_EVENT_LOOP", "trio")
    assert main(["--credentials", "/nonexistent.json"]) == 2
    assert "ICLAIM_EVENT_LOOP" in capsys.readouterr().err
