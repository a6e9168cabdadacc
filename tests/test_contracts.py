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


def test_imports_past_a_subpackage_face_are_found():
    """The face contract on this project's own ``trainer.comm`` (whose ``__all__`` leaves
    ``links`` out): an import of ``links`` from another subpackage is reported, one from
    inside ``comm`` or of a module of the face is not."""
    import grimp

    from tests.contracts import behind_faces, face_of

    assert "transport" in face_of("trainer.comm") and "links" not in face_of("trainer.comm")
    g = grimp.ImportGraph()
    for m in ("trainer", "trainer.comm", "trainer.comm.links", "trainer.comm.transport", "trainer.run",
              "trainer.run.loop", "tests", "tests.test_x"):
        g.add_module(m)
    g.add_import(importer="trainer.comm.transport", imported="trainer.comm.links")  # inside: fine
    g.add_import(importer="trainer.run.loop", imported="trainer.comm.transport")  # the face: fine
    g.add_import(importer="tests.test_x", imported="trainer.comm.links")  # not an importer held to it
    assert behind_faces(g, ["trainer"], ("trainer",)) == []
    g.add_import(importer="trainer.run.loop", imported="trainer.comm.links")
    found = behind_faces(g, ["trainer"], ("trainer",))
    assert len(found) == 1 and found[0].startswith("trainer.run.loop -> trainer.comm.links")
