from buildpacks.procfile import parse_procfile
from buildpacks.slugignore import slugignore_filter


def test_procfile_with_comments_and_shell_syntax():
    text = """# a comment
web: gunicorn app:app --bind 0.0.0.0:${PORT:-5000}  # trailing comment stays in the command

worker:   python worker.py; echo done
release: ./migrate.sh && echo ok
Bad line without colon
empty:
web: override --last-wins
"""
    types, warnings = parse_procfile(text)
    assert types == {
        "web": "override --last-wins",
        "worker": "python worker.py; echo done",
        "release": "./migrate.sh && echo ok",
    }
    assert len(warnings) == 2
    assert "line 6" in warnings[0] and "line 7" in warnings[1]


def test_procfile_crlf_and_case():
    types, _ = parse_procfile("Web: node server.js\r\nclock: node clock.js\r\n")
    assert types == {"web": "node server.js", "clock": "node clock.js"}


def test_slugignore():
    keep = slugignore_filter("# comment\n*.psd\n/docs\nspec/\ntmp/*.log\n!keep.psd\n")
    assert keep("app.py")
    assert not keep("art/logo.psd")
    assert not keep("docs/index.md")
    assert keep("src/docs")  # anchored: only the root's docs
    assert not keep("a/spec/test.py")
    assert keep("spec")  # dir-only pattern does not match a file
    assert not keep("tmp/x.log")
    assert keep("tmp/x.txt")
    assert not keep("keep.psd")  # negation is not supported, as on Heroku
    assert slugignore_filter(None)("anything")
