"""The per-deployment app log: platform events are best effort."""

from bae.logstore import LogStore


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
