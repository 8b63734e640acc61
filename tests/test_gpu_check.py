"""The prepared GPU check (benchmarks/gpu_check.py) cannot rot: its CPU smoke run passes here, every
correctness check included, and writes the JSON and tables the README tells GPU users to read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from datadir import REPO


def test_gpu_check_cpu_smoke_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    checks = {c["check"]: c for c in result["correctness"]}
    assert all(c["ok"] for c in checks.values() if c["strict"]), checks
    assert any("spec-literal oracle" in name for name in checks)
    assert any("transformers.generate" in name for name in checks)
    assert any("NSP steps lower the loss" in name for name in checks)
    rows = result["speed"]
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        assert r["ar_ratio"] == 1.0 and r["conf_D4_fed"] == 5 and r["verify_D4_fed"] == 1 + 22
        assert r["verify_D8_fed"] == 1 + 92 and r["ar_identical_to_hf"] == r["batch"]  # fp32 on CPU: identical
        assert 0 <= r["overhead_ar"] < 1 and r["speedup_at_tpf_2.15_conf_D4"] > 0
    assert "| shape | batch | AR ms |" in proc.stdout
