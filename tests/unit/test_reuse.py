"""The decision to reuse a previous build (pure logic over in-memory git objects)."""

from dulwich.object_store import MemoryObjectStore
from dulwich.objects import Blob, Commit, Tree

from buildpacks.reuse import fingerprint, inputs_digest, plan_reuse
from gitserver.repos import CommitSource


def commit(store, files: dict[str, bytes]) -> CommitSource:
    def tree_of(entries: dict) -> bytes:
        tree = Tree()
        for name, value in entries.items():
            if isinstance(value, dict):
                tree.add(name.encode(), 0o040000, tree_of(value))
            else:
                blob = Blob.from_string(value)
                store.add_object(blob)
                tree.add(name.encode(), 0o100644, blob.id)
        store.add_object(tree)
        return tree.id

    nested: dict = {}
    for path, data in files.items():
        node = nested
        *dirs, name = path.split("/")
        for d in dirs:
            node = node.setdefault(d, {})
        node[name] = data
    c = Commit()
    c.tree = tree_of(nested)
    c.author = c.committer = b"t <t@t>"
    c.author_time = c.commit_time = 0
    c.author_timezone = c.commit_timezone = 0
    c.message = b"m"
    store.add_object(c)
    return CommitSource(store, c.id)


def previous(store, old, fp="fp"):
    inputs = ["requirements.txt", "runtime.txt"]
    return {"fingerprint": fp, "inputs": inputs, "digest": inputs_digest(old, inputs), "depth": 0}


def test_code_change_is_reused_with_changed_files():
    store = MemoryObjectStore()
    old = commit(store, {"requirements.txt": b"flask\n", "app.py": b"v1", "lib/x.py": b"x"})
    new = commit(store, {"requirements.txt": b"flask\n", "app.py": b"v2", "lib/x.py": b"x", "lib/y.py": b"y"})
    plan = plan_reuse(previous(store, old), "fp", new, old, lambda p: True)
    assert plan.changed == {"app.py", "lib/y.py"}
    assert plan.depth == 1


def test_changed_inputs_deletions_fingerprints_and_depth_force_a_build():
    store = MemoryObjectStore()
    old = commit(store, {"requirements.txt": b"flask\n", "app.py": b"v1"})
    prev = previous(store, old)
    assert plan_reuse(prev, "fp", commit(store, {"requirements.txt": b"flask\ndjango\n", "app.py": b"v1"}),
                      old, lambda p: True) is None
    assert plan_reuse(prev, "fp", commit(store, {"requirements.txt": b"flask\n", "app.py": b"v1", "runtime.txt": b"3.11"}),
                      old, lambda p: True) is None  # an input appeared
    assert plan_reuse(prev, "fp", commit(store, {"requirements.txt": b"flask\n"}), old, lambda p: True) is None
    same = commit(store, {"requirements.txt": b"flask\n", "app.py": b"v2"})
    assert plan_reuse(prev, "other", same, old, lambda p: True) is None
    assert plan_reuse(dict(prev, depth=20), "fp", same, old, lambda p: True) is None
    assert plan_reuse(None, "fp", same, old, lambda p: True) is None
    # a deleted file that .slugignore drops anyway does not matter
    ignored = commit(store, {"requirements.txt": b"flask\n", "app.py": b"v1", "notes.log": b"x"})
    assert plan_reuse(prev, "fp", old, ignored, lambda p: not p.endswith(".log")) is not None


def test_fingerprint_covers_config_and_slugignore(tmp_path):
    bp = tmp_path / "bp"
    (bp / "bin").mkdir(parents=True)
    (bp / "bin" / "compile").write_text("x")
    builder = tmp_path / "builder.py"
    builder.write_text("b")
    base = fingerprint("stack:1", [str(bp)], str(builder), {"A": "1"}, None)
    assert base == fingerprint("stack:1", [str(bp)], str(builder), {"A": "1"}, None)
    assert base != fingerprint("stack:2", [str(bp)], str(builder), {"A": "1"}, None)
    assert base != fingerprint("stack:1", [str(bp)], str(builder), {"A": "2"}, None)
    assert base != fingerprint("stack:1", [str(bp)], str(builder), {"A": "1"}, b"*.log")
    # an operator editing a local buildpack while bae serves: the next build must not reuse the old output
    (bp / "bin" / "compile").write_text("y")
    assert base != fingerprint("stack:1", [str(bp)], str(builder), {"A": "1"}, None)
