"""The per-deployment app log: platform events are best effort."""

from bae.logstore import Entry, LogStore


def test_event_is_written_and_read_back(tmp_path):
    logs = LogStore(tmp_path / "apps", 100, tmp_path / "router")
    logs.event("shop", "default", "deploy", "v2 is live")
    (entry,) = logs.read("shop", "default")
    assert entry.render().endswith("bae[deploy]: v2 is live")


def test_event_that_cannot_be_written_does_not_raise(tmp_path, caplog):
    logs = LogStore(tmp_path / "apps", 100, tmp_path / "router")
    logs.path("shop", "default").mkdir()  # opening the log fails with OSError, as on a full disk
    logs.event("shop", "default", "deploy", "v2 is live")
    assert "could not write the app log of shop/default" in caplog.text


def test_last_time_of_a_container_among_others(tmp_path):
    logs = LogStore(tmp_path / "apps", 100, tmp_path / "router")
    assert logs.last_time("shop", "default", "c1") is None
    logs.append("shop", "default", [Entry("2026-11-25T10:00:01.000000+00:00", "app", "web.1", "a", "c1"),
                                    Entry("2026-11-25T10:00:02.000000+00:00", "app", "web.2", "b", "c2")])
    logs.append("shop", "default", [Entry("2026-11-25T10:00:03.000000+00:00", "app", "web.1", "c", "c1")])
    logs.event("shop", "default", "scheduler", "web.1 crashed")
    assert logs.last_time("shop", "default", "c1") == "2026-11-25T10:00:03.000000+00:00"
    assert logs.last_time("shop", "default", "c2") == "2026-11-25T10:00:02.000000+00:00"
    assert logs.last_time("shop", "default", "c3") is None
