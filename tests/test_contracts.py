"""The private-names import contract finds what it is named for (tests/contracts.py)."""

from __future__ import annotations

import textwrap

from tests.contracts import private_uses


def test_private_names_of_another_module_are_found(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def _helper(): pass\nPUBLIC = 1\n")
    (pkg / "b.py").write_text(textwrap.dedent("""
        from pkg.a import _helper, PUBLIC
        from pkg import a
        import pkg.a as alias
        from . import a as rel
        a._helper()
        alias._helper()
        rel._other
        a.__name__
        self_ = _mine = 1
    """))
    (pkg / "c.py").write_text("from pkg.a import PUBLIC\nfrom os import _exit\n")
    monkeypatch.chdir(tmp_path)
    found = private_uses("pkg.b", ("pkg",))
    assert found == ["pkg.b:2 imports pkg.a._helper", "pkg.b:6 uses pkg.a._helper", "pkg.b:7 uses pkg.a._helper",
                     "pkg.b:8 uses pkg.a._other"]
    assert private_uses("pkg.c", ("pkg",)) == []  # public names, and other projects' privates, are fine
