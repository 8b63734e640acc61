"""Results written before the one-vocabulary refactor stay valid (issue 14).

``tests/fixtures/cells_v0/`` holds cells of the CPU demo written by the code of commit 16549e0 (before
``sdlm.decoders`` / ``sdlm.cells`` existed): ``cell.json`` rows without ``model_key`` / ``decoder``, their
``fidelity.json`` and ``stats_*.jsonl``, and the D = 4 checkpoint's ``sdlm_training.json`` (probe keys such as
``prob_conf_tau0.98``; ``log_history`` trimmed). ``expected_cells.csv`` / ``expected_batches.csv`` are what that
commit's ``sdlm.report.aggregate`` / ``batch_frame`` made of them: the independent reference here.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest

from sdlm.cells import CELL_FILE, cell_identity, find_cells, read_cell_rows
from sdlm.decoders import Decoder, probe_key_label
from sdlm.report import aggregate, batch_frame, load_tpf_curves

FIXTURE = Path(__file__).parent / "fixtures" / "cells_v0"
CELLS = FIXTURE / "results" / "cells"


@pytest.fixture
def in_fixture(monkeypatch):
    monkeypatch.chdir(FIXTURE)  # the rows name their files relative to the run's folder, as the pipeline wrote them


def test_every_old_folder_name_parses_and_spells_back_byte_identical():
    names = sorted({p.parent.name for p in CELLS.rglob(CELL_FILE)})
    assert len(names) == 11  # ar, step1, self-spec, 4 prob_conf + 4 entropy_conf taus
    for name in names:
        assert Decoder.parse(name).name == name


#: the fixture's 15 cells as (model key, decoder), written out by hand from its folder listing
OLD_CELLS = [
    *(("smollm2-D4", f"{alg}_D4_tau{tau}") for alg in ("entropy_conf", "prob_conf") for tau in ("0.7", "0.82", "0.9", "0.98")),
    ("smollm2-D4", "self_speculative_D4"), ("smollm2-D4", "step1_D4"),
    ("smollm2-D4", "prob_conf_D4_tau0.9"), ("smollm2-D4", "self_speculative_D4"), ("smollm2-D4", "step1_D4"),
    ("smollm2-ar", "ar"), ("smollm2-ar", "ar"),
]


def test_old_rows_are_identified_by_their_folder_layout():
    found = []
    for path in find_cells(CELLS):
        (row,) = read_cell_rows(path)
        assert "model_key" not in row and "decoder" not in row  # the fixture really is the old format
        found.append(cell_identity(path, row))
    assert sorted(found) == sorted(OLD_CELLS)


def _old_columns(frame: pd.DataFrame, expected: pd.DataFrame) -> pd.DataFrame:
    """The new frame, as CSV text re-read, restricted to the old frame's columns (new columns may be added)."""
    assert set(expected.columns) <= set(frame.columns), set(expected.columns) - set(frame.columns)
    return pd.read_csv(io.StringIO(frame.to_csv(index=False)))[list(expected.columns)]


def test_aggregate_of_old_cells_equals_what_the_old_code_made(in_fixture):
    expected = pd.read_csv(FIXTURE / "expected_cells.csv")
    frame = aggregate("results/cells")
    got = _old_columns(frame, expected)
    assert len(got) == 15
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    # byte-identical where the columns are the old ones
    if list(frame.columns) == list(expected.columns):
        assert frame.to_csv(index=False) == (FIXTURE / "expected_cells.csv").read_text()


def test_batches_of_old_cells_equal_what_the_old_code_made(in_fixture):
    expected = pd.read_csv(FIXTURE / "expected_batches.csv")
    got = _old_columns(batch_frame(aggregate("results/cells")), expected)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_old_probe_keys_in_sdlm_training_json_still_parse(in_fixture):
    summary = json.loads(Path("results/checkpoints/smollm2-D4/sdlm_training.json").read_text())
    keys = {k for point in summary["tpf_curve"] for k in point["tpf"]}
    assert keys == {"prob_conf_tau0.98", "prob_conf_tau0.82", "self_speculative"}
    for key in keys:
        dec = Decoder.parse(key, block_size=summary["block_size"])
        assert dec.probe_key == key and dec.block_size == 4
    curves = load_tpf_curves({"smollm2-D4": "results/checkpoints/smollm2-D4/sdlm_training.json"})
    assert len(curves) == 3 * len(summary["tpf_curve"])
    assert set(curves["decoder"]) == keys
    assert {probe_key_label(k) for k in keys} == {"conf 0.98", "conf 0.82", "self-spec"}
