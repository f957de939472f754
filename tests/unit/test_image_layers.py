"""The configuration of a code-only release image made by `docker load` (buildpacks/layers.py)."""

from buildpacks.layers import child_config

PARENT = {
    "Architecture": "amd64", "Os": "linux",
    "Config": {"User": "bae", "WorkingDir": "/home/bae/app", "Env": ["PATH=/usr/bin", "HOME=/home/bae"],
               "Entrypoint": ["/usr/bin/tini", "-g", "--", "/usr/local/bin/bae-launch"], "Cmd": ["bash"],
               "Labels": {"bae.role": "image", "bae.build": "1"}},
    "RootFS": {"Type": "layers", "Layers": ["sha256:" + "a" * 64, "sha256:" + "b" * 64]},
}
HISTORY = [  # as the engine lists it: newest first, sizes of the layers the entries made
    {"Created": 1700000300, "CreatedBy": "/usr/bin/tini -g -- python3 /tmp/bae/builder.py", "Size": 2300000},
    {"Created": 1700000200, "CreatedBy": "/bin/sh -c #(nop)  USER bae", "Size": 0},
    {"Created": 1700000100, "CreatedBy": "", "Size": 80000000, "Comment": "Imported from -"},
]


def test_child_adds_one_layer_and_one_history_entry():
    config = child_config(PARENT, HISTORY, "sha256:" + "c" * 64, "2026-12-02T08:00:00Z", "bae: build 2",
                          {"bae.build": "2"})
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:" + "a" * 64, "sha256:" + "b" * 64,
                                                               "sha256:" + "c" * 64]}
    assert [h["created_by"] for h in config["history"]] == [
        "", "/bin/sh -c #(nop)  USER bae", "/usr/bin/tini -g -- python3 /tmp/bae/builder.py", "bae: build 2"]
    # entries of size 0 made no layer: never more layer-making entries than layers (the engine refuses that)
    assert [bool(h.get("empty_layer")) for h in config["history"]] == [False, True, False, False]
    assert config["history"][0]["comment"] == "Imported from -"
    assert config["history"][0]["created"] == "2023-11-14T22:15:00Z"
    assert config["created"] == "2026-12-02T08:00:00Z"
    # the parent's settings stay; the labels are updated
    assert config["config"]["Entrypoint"] == PARENT["Config"]["Entrypoint"]
    assert config["config"]["User"] == "bae" and config["config"]["WorkingDir"] == "/home/bae/app"
    assert config["config"]["Labels"] == {"bae.role": "image", "bae.build": "2"}
    assert PARENT["Config"]["Labels"]["bae.build"] == "1"  # the parent's attributes are not changed
    assert (config["architecture"], config["os"]) == ("amd64", "linux")


def test_child_without_a_layer():
    config = child_config({**PARENT, "Config": {**PARENT["Config"], "Labels": None}}, HISTORY, None,
                          "2026-12-02T08:00:00Z", "bae: build 3", {"bae.build": "3"})
    assert len(config["rootfs"]["diff_ids"]) == 2
    assert config["history"][-1] == {"created": "2026-12-02T08:00:00Z", "created_by": "bae: build 3", "empty_layer": True}
    assert sum(not h.get("empty_layer") for h in config["history"]) <= len(config["rootfs"]["diff_ids"])
    assert config["config"]["Labels"] == {"bae.build": "3"}
