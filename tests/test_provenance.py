import json
import os
import stat

import pytest

from sdlm.provenance import atomic_write_json, atomic_write_text, config_hash, provenance


def test_atomic_write_replaces_whole_file_and_keeps_normal_permissions(tmp_path):
    p = tmp_path / "sub" / "r.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    mode = stat.S_IMODE(os.stat(p).st_mode)
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    assert [f.name for f in p.parent.iterdir()] == ["r.json"]


def test_interrupted_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
    p = tmp_path / "r.txt"
    atomic_write_text(p, "old")

    def interrupted(*a, **k):  # the process dies between writing the temp file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr("sdlm.provenance.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(p, "new and long")
    assert p.read_text() == "old" and [f.name for f in tmp_path.iterdir()] == ["r.txt"]


def test_provenance_records_config_hash_versions_and_hardware():
    a = provenance({"tau": 0.98, "D": 4}, seed=3)
    b = provenance({"D": 4, "tau": 0.98}, seed=3)
    assert a["config_hash"] == b["config_hash"] == config_hash({"tau": 0.98, "D": 4})
    assert a["config_hash"] != config_hash({"tau": 0.9, "D": 4})
    assert a["seed"] == 3 and a["versions"]["torch"] and a["hardware"]["cpu_count"] >= 1
    assert set(a["git"]) == {"commit", "dirty"}
