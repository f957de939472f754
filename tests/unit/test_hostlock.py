"""host_lock: one holder at a time per name, across threads and processes of this host."""

from __future__ import annotations

import threading

from bae.hostlock import host_lock


def test_a_second_holder_waits_until_the_first_lets_go():
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with host_lock("test", "bae/stack:bookworm"):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    thread = threading.Thread(target=first)
    thread.start()
    inside.wait(10)
    def second_holder() -> None:
        with host_lock("test", "bae/stack:bookworm"):
            order.append("second in")

    second = threading.Thread(target=second_holder)
    second.start()
    second.join(0.3)
    assert order == ["first in"]  # still waiting
    release.set()
    thread.join(10)
    second.join(10)
    assert order == ["first in", "first out", "second in"]


def test_names_from_tags_make_one_plain_file_name(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path))
    with host_lock("stack", "bae/abc:sid"):
        pass
    assert [p.name for p in tmp_path.iterdir()] == ["bae-stack-bae-abc-sid.lock"]
