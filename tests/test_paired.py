"""The paired comparison with the AR baseline (exact McNemar) and the busy-machine mark, on hand-made cells
whose expected values are worked out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sdlm.report.paired import add_load, add_paired, mcnemar_exact


@pytest.mark.parametrize("wins, losses, p", [
    (0, 0, 1.0),                       # no discordant problem
    (5, 0, 2 / 32),                    # P(X <= 0 | n=5) = 1/32, two-sided
    (3, 1, 2 * (1 + 4) / 16),          # P(X <= 1 | n=4) = (C(4,0) + C(4,1)) / 16
    (2, 10, 2 * (1 + 12 + 66) / 4096),  # P(X <= 2 | n=12)
    (4, 4, 1.0),                       # capped at 1
])
def test_mcnemar_exact_by_hand(wins, losses, p):
    assert mcnemar_exact(wins, losses) == pytest.approx(p)
    assert mcnemar_exact(losses, wins) == pytest.approx(p)  # two-sided: symmetric


def _cell(folder: Path, task: str, scores: dict[int, float], load=None) -> str:
    folder.mkdir(parents=True)
    row = {"task": task, "files": {"samples": f"samples_{task}.jsonl"}}
    if load is not None:
        row["load"] = load
    (folder / "cell.json").write_text(json.dumps([row]))
    (folder / f"samples_{task}.jsonl").write_text("".join(
        json.dumps({"doc_id": d, "pass_at_1": v, "filter": "none"}) + "\n" for d, v in scores.items()))
    return str(folder / "cell.json")


def test_wins_and_losses_are_counted_on_the_same_problems(tmp_path):
    ar = _cell(tmp_path / "ar", "he", {0: 1, 1: 1, 2: 0, 3: 0, 4: 1, 5: 0})
    sd = _cell(tmp_path / "sd", "he", {0: 1, 1: 0, 2: 1, 3: 1, 4: 1, 6: 1})  # doc 6 has no AR answer: not paired
    frame = pd.DataFrame([
        {"model": "base", "task": "he", "alg": "ar", "cell_path": ar, "metric": "pass_at_1,none"},
        {"model": "sdlm", "task": "he", "alg": "prob_conf", "cell_path": sd, "metric": "pass_at_1,none"},
    ])
    out = add_paired(frame, {"sdlm": {"baseline": "base"}, "base": {}})
    sd_row, ar_row = out.iloc[1], out.iloc[0]
    # paired docs 0..4 (5 has no SDLM answer, 6 no AR one): sdlm wins 2 and 3, loses 1; 0 and 4 both right
    assert (sd_row.paired_n, sd_row.wins, sd_row.losses) == (5, 2, 1)
    assert sd_row.mcnemar_p == pytest.approx(2 * (1 + 3) / 8)  # P(X <= 1 | n=3) = 4/8 -> 1.0
    assert pd.isna(ar_row.wins) and pd.isna(ar_row.mcnemar_p)  # the baseline itself is not compared
    assert pd.isna(add_paired(frame, {}).iloc[1].wins)  # no baseline named: nothing to compare


def test_busy_machine_is_marked(tmp_path):
    busy = {"start": {"loadavg": [1.9, 1.5, 1.0], "usable_cores": 2}, "end": {"loadavg": [3.8, 2.0, 1.1], "usable_cores": 2}}
    calm = {"start": {"loadavg": [2.1, 1.5, 1.0], "usable_cores": 2}, "end": {"loadavg": [2.3, 2.0, 1.1], "usable_cores": 2}}
    frame = pd.DataFrame([
        {"task": "t", "cell_path": _cell(tmp_path / "a", "t", {0: 1}, busy)},
        {"task": "t", "cell_path": _cell(tmp_path / "b", "t", {0: 1}, calm)},
        {"task": "t", "cell_path": _cell(tmp_path / "c", "t", {0: 1})},
    ])
    flags = add_load(frame)["busy"]
    assert flags.iloc[0] is True or bool(flags.iloc[0]) is True
    assert bool(flags.iloc[1]) is False and pd.isna(flags.iloc[2])


def test_progress_lines_every_minute_with_an_eta():
    import io

    from sdlm.progress import Progress

    now = [0.0]
    out = io.StringIO()
    p = Progress(10, "things", stream=out, clock=lambda: now[0])
    assert p.update(1) is None  # less than a minute: quiet
    now[0] = 61.0
    assert p.update(2) == "[sdlm] things 2/10 (20%) elapsed 1:01 ETA 4:04"  # 30.5 s per item x 8 left
    now[0] = 70.0
    assert p.update(10) == "[sdlm] things 10/10 (100%) elapsed 1:10 ETA 0:00"  # the end always prints
    assert out.getvalue().count("\n") == 2


def test_progress_eta_after_a_resume_counts_only_this_process():
    """80 of 447 prompts kept from a stopped run, 16 decoded in 3 minutes: 351 left at 11.25 s each -> 1:05:48,
    not the 7:51 that counting the kept ones as paid for gave."""
    import io

    from sdlm.progress import Progress

    now = [0.0]
    p = Progress(447, "prompts", stream=io.StringIO(), clock=lambda: now[0])
    p.skip(80)
    now[0] = 180.0
    assert p.update(96) == "[sdlm] prompts 96/447 (21%) elapsed 3:00 ETA 1:05:48"
