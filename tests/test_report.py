"""sdlm.report on synthetic cell.json files: the frame, Table 1 / Table 3 values, published numbers placed
beside matching configurations only, speed-ups, rendering (md, LaTeX, HTML, PNG) and the CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sdlm import report as R
from sdlm.tasks import task_info

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper_numbers.csv"
HW = {"machine": "x86_64", "cpu_count": 2, "torch_threads": 2}


def write_cell(root: Path, model: str, task: str, decoder: str, *, alg: str, D: int | None = None,
               tau: float | None = None, acc: float, tpf: float, tps: float, n: int = 10, hw=HW,
               metric: str | None = None) -> Path:
    metric = metric or task_info(task).metric
    d = root / model / task / decoder
    d.mkdir(parents=True, exist_ok=True)
    row = {
        "task": task, "model": f"/ckpt/{model}", "alg": alg, "block_size": D, "threshold": tau if tau is not None else 0.98,
        "n": n, "metrics": {metric: acc, metric.replace(",", "_stderr,", 1): 0.05, "other,none": 0.5},
        "decode": {"requests": n, "new_tokens": 1000, "nfe": round(1000 / tpf), "tpf": tpf, "tokens_per_s": tps,
                   "prefill_s": 1.0, "decode_s": 1000 / tps - 1.0, "wall_s": 1000 / tps, "accepted_hist": [5, 3],
                   "discarded_tokens": 2},
        "limit": None, "seed": 1234, "eval_wall_s": 12.0, "model_dtype": "float32",
        "files": {"samples": f"samples_{task}.jsonl", "stats": f"stats_{task}.jsonl", "results": "results.json"},
        "provenance": {"config": {"model_args": {"batch_size": 4, "max_new_tokens": 256}}, "config_hash": f"h-{decoder}",
                       "git": {"commit": "c0ffee", "dirty": False}, "versions": {"torch": "2.13", "lm_eval": "0.4.13"},
                       "hardware": hw, "seed": 1234, "time_utc": "2026-01-01T00:00:00Z"},
    }
    (d / "cell.json").write_text(json.dumps([row]))
    stats = [{"rank": 0, "batch": i // 4, "new_tokens": 100, "prefill_s": 0.1, "decode_s": 0.5 + 0.1 * (i % 4)}
             for i in range(n)]
    (d / f"stats_{task}.jsonl").write_text("".join(json.dumps(s) + "\n" for s in stats))
    return d / "cell.json"


def ci(p: float, n: int = 10) -> str:
    lo, hi = R.wilson_interval(p, n)
    return f"[{100 * lo:.1f}, {100 * hi:.1f}]"


MODELS = {
    "sd-D4": {"label": "SD D=4", "block_size": 4, "paper_model": "SDLM-3B", "baseline": "base-ar"},
    "sd-D8": {"label": "SD D=8", "block_size": 8, "paper_model": None, "baseline": "base-ar"},
    "base-ar": {"label": "AR-SFT", "block_size": None, "paper_model": "Qwen-2.5-3B-SFT"},
}


@pytest.fixture
def cells(tmp_path):
    root = tmp_path / "cells"
    for task, ar_acc in (("gsm8k_sdlm", 0.80), ("mbpp_sdlm", 0.60)):
        write_cell(root, "base-ar", task, "ar", alg="ar", acc=ar_acc, tpf=1.0, tps=40.0)
        for D in (4, 8):
            for tau, tpf in ((0.98, 1.5), (0.9, 2.0), (0.82, 2.5)):
                write_cell(root, f"sd-D{D}", task, f"prob_conf_D{D}_tau{tau}", alg="prob_conf", D=D, tau=tau,
                           acc=ar_acc - 0.1 * (1 - tau), tpf=tpf * D / 4, tps=40.0 * tpf * 0.6)
            write_cell(root, f"sd-D{D}", task, f"self_speculative_D{D}", alg="self_speculative", D=D,
                       acc=ar_acc - 0.01, tpf=3.0 * D / 4, tps=60.0)
    (root / "sd-D4" / "gsm8k_sdlm" / "entropy_conf_D4_tau0.7").mkdir(parents=True)  # unfinished: no cell.json
    (root / "sd-D4" / "gsm8k_sdlm" / "entropy_conf_D4_tau0.7" / "results.json").write_text("{}")
    return root


def test_aggregate_frame(cells):
    f = R.aggregate(cells)
    assert len(f) == 2 * (1 + 2 * 4)  # unfinished cell ignored
    row = f[(f.model == "sd-D4") & (f.task == "gsm8k_sdlm") & (f.decoder == "prob_conf_D4_tau0.9")].iloc[0]
    assert row.alg == "prob_conf" and row.block_size == 4 and row.tau == pytest.approx(0.9)
    assert row.accuracy == pytest.approx(79.0) and row.accuracy_stderr == pytest.approx(5.0)
    assert row.tpf == pytest.approx(2.0) and row.benchmark == "GSM8K" and row.metric == "exact_match,none"
    assert row["metric:other,none"] == pytest.approx(0.5)
    assert row.decode_tokens_per_s == pytest.approx(1000 / (1000 / row.tokens_per_s - 1.0))
    for col in ("cell_path", "git_commit", "git_dirty", "config_hash", "seed", "time_utc", "hardware",
                "version_torch", "version_lm_eval"):
        assert col in f.columns and f[col].notna().all(), col
    ar = f[f.alg == "ar"]
    assert ar.block_size.isna().all() and ar.tau.isna().all()
    spec = f[f.alg == "self_speculative"]
    assert spec.tau.isna().all() and set(spec.block_size) == {4, 8}
    # order: model, benchmark (paper order), AR first, D, tau falling
    sd4 = f[(f.model == "sd-D4") & (f.task == "gsm8k_sdlm")]
    assert list(sd4.decoder) == ["prob_conf_D4_tau0.98", "prob_conf_D4_tau0.9", "prob_conf_D4_tau0.82", "self_speculative_D4"]


def test_aggregate_round_trip_and_errors(cells, tmp_path):
    f = R.aggregate([cells / "base-ar"])
    assert set(f.model) == {"base-ar"}
    csv = tmp_path / "c.csv"
    R.aggregate(cells).to_csv(csv, index=False)
    back = R.read_frame(csv)
    assert back.block_size.dtype.name == "Int64" and len(back) == 18
    assert R.table1(back, R.load_paper_numbers(PAPER), MODELS).equals(R.table1(R.aggregate(cells), R.load_paper_numbers(PAPER), MODELS))
    bad = tmp_path / "bad" / "m" / "gsm8k_sdlm" / "ar"
    bad.mkdir(parents=True)
    (bad / "cell.json").write_text('[{"task": ')
    with pytest.raises(ValueError, match="not valid JSON"):
        R.aggregate(tmp_path / "bad")
    with pytest.raises(FileNotFoundError):
        R.aggregate(tmp_path / "nowhere")


def test_table1_values_and_paper_rows(cells):
    t = R.table1(R.aggregate(cells), R.load_paper_numbers(PAPER), MODELS)
    assert list(t.columns) == ["Model", "D", "Decoding", "tau", "Source", "GSM8K", "MBPP", "Avg"]
    recs = t.to_dict("records")
    # AR first, then its paper row (Qwen-2.5-3B-SFT: GSM8K 85.8, MBPP 68.5)
    # with Wilson 95% intervals over n = 10 (8/10: [49.0, 94.3], 6/10: [31.3, 83.2], textbook values)
    assert recs[0] == {"Model": "AR-SFT", "D": "", "Decoding": "AR", "tau": "", "Source": "measured",
                             "GSM8K": "80.0 [49.0, 94.3]", "MBPP": "60.0 [31.3, 83.2]", "Avg": "70.0"}
    assert recs[1]["Source"] == "paper" and recs[1]["GSM8K"] == "85.8" and recs[1]["MBPP"] == "68.5"
    assert recs[1]["Avg"] == "77.2"  # (85.8 + 68.5) / 2: the columns shown, not the paper's 8-benchmark average
    # SD D=4 tau .98: measured then paper (84.6 (2.15), 65.4 (1.66))
    i = next(k for k, r in enumerate(recs) if r["Model"] == "SD D=4" and r["tau"] == "0.98")
    assert recs[i]["Source"] == "measured" and recs[i]["GSM8K"] == f"79.8 {ci(0.798)} (1.50)"
    assert recs[i]["MBPP"] == f"59.8 {ci(0.598)} (1.50)"
    assert recs[i]["Avg"] == "69.8 (1.50)"
    assert recs[i + 1] == {**{k: recs[i][k] for k in ("Model", "D", "Decoding", "tau")}, "Source": "paper",
                           "GSM8K": "84.6 (2.15)", "MBPP": "65.4 (1.66)", "Avg": "75.0 (1.90)"}
    # tau .9 has no published row; tau .82 has one (84.5 (2.75))
    j = next(k for k, r in enumerate(recs) if r["Model"] == "SD D=4" and r["tau"] == "0.9")
    assert recs[j + 1]["Source"] == "measured"
    k = next(k for k, r in enumerate(recs) if r["Model"] == "SD D=4" and r["tau"] == "0.82")
    assert recs[k + 1]["Source"] == "paper" and recs[k + 1]["GSM8K"] == "84.5 (2.75)"
    # D=8 has no paper_model: measured rows only; self-speculative is not in Table 1
    assert all(r["Source"] == "measured" for r in recs if r["Model"] == "SD D=8")
    assert not any(r["Decoding"] == "self-spec" for r in recs)
    assert sum(r["Source"] == "paper" for r in recs) == 3


def test_paper_rows_need_the_same_model_and_D(cells):
    models = {**MODELS, "sd-D8": {**MODELS["sd-D8"], "paper_model": "SDLM-3B"}}
    t = R.table1(R.aggregate(cells), R.load_paper_numbers(PAPER), models)
    d8 = t[(t.Model == "SD D=8") & (t.Source == "paper")]
    assert list(d8.GSM8K) == ["83.3 (2.52)", "83.2 (3.67)"]  # D=8 numbers, never the D=4 ones
    wrong = {**MODELS, "sd-D4": {**MODELS["sd-D4"], "paper_model": "SDLM-32B"}}
    t = R.table1(R.aggregate(cells), R.load_paper_numbers(PAPER), wrong)
    assert list(t[(t.Model == "SD D=4") & (t.Source == "paper")].GSM8K) == ["92.4 (2.15)", "92.3 (2.71)"]
    assert R.table1(R.aggregate(cells), None, MODELS).Source.eq("measured").all()


def test_table3(cells):
    t = R.table3(R.aggregate(cells), R.load_paper_numbers(PAPER), MODELS)
    rows = [(r["Model"], r["Decoding"], r["Source"], r["GSM8K"]) for r in t.to_dict("records")]
    assert rows == [
        ("AR-SFT", "AR", "measured", "80.0 [49.0, 94.3]"), ("AR-SFT", "AR", "paper", "85.8"),
        ("SD D=4", "conf 0.98", "measured", f"79.8 {ci(0.798)} (1.50)"), ("SD D=4", "conf 0.98", "paper", "84.6 (2.15)"),
        ("SD D=4", "self-spec", "measured", f"79.0 {ci(0.79)} (3.00)"), ("SD D=4", "self-spec", "paper", "85.1 (3.62)"),
        ("SD D=8", "conf 0.98", "measured", f"79.8 {ci(0.798)} (3.00)"),
        ("SD D=8", "self-spec", "measured", f"79.0 {ci(0.79)} (6.00)"),
    ]
    # without tau .98 the highest measured tau stands in
    f = R.aggregate(cells)
    t = R.table3(f[f.tau.isna() | (f.tau < 0.95)], None, MODELS)
    assert "conf 0.9" in set(t.Decoding)
    assert R.table3(f[f.alg != "self_speculative"]).empty


def test_speedup_same_hardware_only(cells, tmp_path):
    f = R.add_speedup(R.aggregate(cells), MODELS)
    r = f[(f.model == "sd-D4") & (f.decoder == "self_speculative_D4") & (f.task == "gsm8k_sdlm")].iloc[0]
    assert r.baseline == "base-ar" and r.speedup == pytest.approx(60.0 / 40.0)
    assert f[f.alg == "ar"].speedup.eq(1.0).all()
    # a cell timed on other hardware gets no speed-up
    write_cell(cells, "sd-D4", "gsm8k_sdlm", "self_speculative_D4", alg="self_speculative", D=4, acc=0.5, tpf=3.0,
               tps=500.0, hw={"gpus": ["NVIDIA H100"], "cpu_count": 16})
    f = R.add_speedup(R.aggregate(cells), MODELS)
    r = f[(f.model == "sd-D4") & (f.decoder == "self_speculative_D4") & (f.task == "gsm8k_sdlm")].iloc[0]
    assert pd.isna(r.speedup) and r.hardware == "1x NVIDIA H100"
    # no models file: the model's own AR cell (none here) -> no speed-up
    assert R.add_speedup(R.aggregate(cells)).query("alg != 'ar'").speedup.isna().all()


def test_batches(cells):
    b = R.batch_frame(R.aggregate(cells))
    assert len(b) == 18 * 3  # 10 requests in batches of 4, 4, 2
    one = b[(b.model == "base-ar") & (b.task == "gsm8k_sdlm")]
    assert list(one.batch_size) == [4, 4, 2]
    assert one.iloc[0].tokens_per_s == pytest.approx(400 / (0.1 + 0.8))


def test_write_report(cells, tmp_path):
    out = tmp_path / "report"
    frame = R.report(cells, out, paper=PAPER, models=MODELS)
    assert sorted(p.name for p in out.iterdir()) == sorted([*R.REPORT_FILES, "cells.csv", "batches.csv", "problems.csv",
                                                            "load.csv"])
    md = (out / "table1.md").read_text()
    paper_row = [line for line in md.splitlines() if "| paper " in line and "84.6 (2.15)" in line]
    assert len(paper_row) == 1 and "| SD D=4 " in paper_row[0] and "| conf 0.98 " in paper_row[0]
    assert "| 65.4 (1.66) " in paper_row[0] and "| 75.0 (1.90) |" in paper_row[0]
    tex = (out / "table1.tex").read_text()
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex and "Accuracy (\\%)" in tex
    assert "84.6 (2.15)" in tex
    html = (out / "table3.html").read_text()
    assert "<table" in html and "85.1 (3.62)" in html
    for fig in R.FIGURES:
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    assert "c0ffee" in (out / "provenance.md").read_text()
    assert len(pd.read_csv(out / "cells.csv")) == len(frame) == 18
    # special characters in model names are escaped in LaTeX
    write_cell(cells, "m_x", "gsm8k_sdlm", "ar", alg="ar", acc=0.1, tpf=1.0, tps=10.0)
    R.report(cells, out)
    assert "m\\_x" in (out / "table1.tex").read_text()


def test_the_report_reads_only_what_aggregation_gathered(cells, tmp_path):
    """Aggregation gathers the paired outcomes and the load figures with the frame (problems.csv, load.csv); the
    report rendered from the four gathered files alone, the cell folders gone, is byte for byte the report rendered
    beside the cells -- won/lost counts and the busy mark included."""
    def scores(decoder: str, model: str, right: list[int]) -> None:
        folder = cells / model / "gsm8k_sdlm" / decoder
        (folder / "samples_gsm8k_sdlm.jsonl").write_text("".join(
            json.dumps({"doc_id": i, "exact_match": float(i in right), "filter": "none"}) + "\n" for i in range(10)))

    scores("ar", "base-ar", [0, 1, 2, 3])
    scores("self_speculative_D4", "sd-D4", [0, 1, 2, 5, 6, 7])  # wins 5, 6, 7; loses 3
    busy = cells / "sd-D4" / "gsm8k_sdlm" / "prob_conf_D4_tau0.9" / "cell.json"
    rows = json.loads(busy.read_text())
    rows[0]["load"] = {"start": {"loadavg": [3.9, 2.0, 1.0], "usable_cores": 2}, "end": {"loadavg": [2.2], "usable_cores": 2}}
    busy.write_text(json.dumps(rows))

    beside = tmp_path / "beside"
    R.report(cells, beside, paper=PAPER, models=MODELS)
    problems = pd.read_csv(beside / "problems.csv")
    assert len(problems) == 20 and set(problems.metric) == {"exact_match,none"}  # the two cells with samples
    load = pd.read_csv(beside / "load.csv")
    assert len(load) == 18 and load.start_loadavg.notna().sum() == 1
    speed = (beside / "speed.md").read_text()
    assert "| 3 / 1 " in speed and "*" in speed

    cells.rename(tmp_path / "gone")
    g = R.read_gathered(*(beside / name for name in ("cells.csv", "batches.csv", "problems.csv", "load.csv")))
    alone = tmp_path / "alone"
    R.write_report(g.cells, alone, paper=R.load_paper_numbers(PAPER), models=MODELS, batches=g.batches,
                   problems=g.problems, loads=g.loads)
    for name in R.REPORT_FILES:  # pandas' Styler gives every HTML table a random id: the rest is equal
        unid = (lambda b: re.sub(rb"T_[0-9a-f]{5}", b"T_id", b)) if name.endswith(".html") else (lambda b: b)
        assert unid((alone / name).read_bytes()) == unid((beside / name).read_bytes()), name


def test_empty_report(tmp_path):
    (tmp_path / "cells").mkdir()
    R.report(tmp_path / "cells", tmp_path / "out")
    for name in R.REPORT_FILES:
        assert (tmp_path / "out" / name).is_file()
    assert "no rows" in (tmp_path / "out" / "table1.md").read_text()


def test_paper_numbers_file():
    p = R.load_paper_numbers(PAPER)
    t1 = p[p.source == "table1"]
    assert len(t1) == 8 * 9  # 8 models x (8 benchmarks + Avg)
    assert set(p.alg) == {"ar", "prob_conf", "self_speculative"}
    assert set(p.benchmark) - {"Avg"} <= set(R.BENCH_ORDER)
    row = p[(p.paper_model == "SDLM-32B") & (p.tau == 0.82) & (p.benchmark == "IFEval")].iloc[0]
    assert (row.accuracy, row.tpf) == (78.2, 1.43)
    assert p[p.source == "fig_tau"].approx.all() and not p[p.source != "fig_tau"].approx.any()


def test_cli(cells, tmp_path):
    mf = tmp_path / "models.json"
    mf.write_text(json.dumps(MODELS))
    run = lambda *a: subprocess.run([sys.executable, "-m", "sdlm.cli", "report", *a], capture_output=True, text=True)  # noqa: E731
    proc = run("--cells", str(cells), "--out", str(tmp_path / "o"), "--paper", str(PAPER), "--models", str(mf))
    assert proc.returncode == 0, proc.stderr
    assert "18 rows from 18 cells" in proc.stdout and (tmp_path / "o" / "table1.tex").is_file()
    proc = run("--cells", str(tmp_path / "missing"), "--out", str(tmp_path / "o2"))
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "missing" in proc.stderr


# ================================================================================ intervals, fidelity, TPF curves
def test_wilson_columns(cells):
    f = R.aggregate(cells)
    row = f[(f.model == "sd-D4") & (f.task == "gsm8k_sdlm") & (f.decoder == "prob_conf_D4_tau0.9")].iloc[0]
    lo, hi = R.wilson_interval(0.79, 10)
    assert (row.acc_lo, row.acc_hi, row.n) == (pytest.approx(100 * lo), pytest.approx(100 * hi), 10)
    assert (f.acc_lo < f.accuracy).all() and (f.accuracy < f.acc_hi).all()


def _samples(cell_json: Path, texts: list[str]) -> None:
    task = json.loads(cell_json.read_text())[0]["task"]
    recs = [{"doc_id": i, "doc": {}, "resps": [[t]], "filtered_resps": [t], "filter": "none"} for i, t in enumerate(texts)]
    (cell_json.parent / f"samples_{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture
def fid_cells(cells):
    """sd-D4 on GSM8K with its one-token-per-step reference (step1_D4) and fidelity.json beside every cell."""
    from sdlm.fidelity import write_fidelity

    root = cells / "sd-D4" / "gsm8k_sdlm"
    ref = write_cell(cells, "sd-D4", "gsm8k_sdlm", "step1_D4", alg="prob_conf", D=4, tau=2.0, acc=0.79, tpf=1.0, tps=20.0)
    texts = [f"step {i} \\boxed{{{i}}}" for i in range(10)]
    _samples(ref, texts)
    _samples(root / "self_speculative_D4" / "cell.json", texts)
    # tau .98: 2 texts differ, 1 of them with another answer; tau .82: 5 differ, 5 other answers
    _samples(root / "prob_conf_D4_tau0.98" / "cell.json",
             [t.replace("step 0", "Step 0") if i == 0 else t.replace("{1}", "{7}") if i == 1 else t for i, t in enumerate(texts)])
    _samples(root / "prob_conf_D4_tau0.82" / "cell.json", [f"x \\boxed{{{i + 1}}}" if i < 5 else t for i, t in enumerate(texts)])
    for d in ("step1_D4", "self_speculative_D4", "prob_conf_D4_tau0.98", "prob_conf_D4_tau0.82"):
        write_fidelity(root / d, root / "step1_D4")
    return cells


def test_fidelity_columns_and_tables(fid_cells, tmp_path):
    f = R.aggregate(fid_cells)
    g = f[(f.model == "sd-D4") & (f.task == "gsm8k_sdlm")].set_index("decoder")
    assert g.loc["step1_D4", ["identical_text_pct", "same_answer_pct", "fidelity_n"]].tolist() == [100.0, 100.0, 10]
    assert g.loc["self_speculative_D4", ["identical_text_pct", "same_answer_pct"]].tolist() == [100.0, 100.0]
    assert g.loc["prob_conf_D4_tau0.98", ["identical_text_pct", "same_answer_pct"]].tolist() == [80.0, 90.0]
    assert g.loc["prob_conf_D4_tau0.82", ["identical_text_pct", "same_answer_pct"]].tolist() == [50.0, 50.0]
    assert g.loc["step1_D4", "fidelity_reference"] == "step1_D4" and g.loc["step1_D4", "tau"] == 2.0
    # no fidelity.json: blank, never 1.0 (AR baselines; cells not compared)
    assert f[f.alg == "ar"][["identical_text_pct", "same_answer_pct"]].isna().all().all()
    assert pd.isna(g.loc["prob_conf_D4_tau0.9", "identical_text_pct"])

    speed = R.speed_table(f, MODELS)
    assert {"accuracy [95% CI]", "identical text %", "same answer %"} <= set(speed.columns)
    rec = speed[(speed.Model == "SD D=4") & (speed.Benchmark == "GSM8K") & (speed.tau == "0.98")].iloc[0]
    assert (rec["identical text %"], rec["same answer %"]) == ("80.0", "90.0")
    assert rec["accuracy [95% CI]"] == f"79.8 {ci(0.798)}"
    ar = speed[speed.Decoding == "AR"].iloc[0]
    assert (ar["identical text %"], ar["same answer %"]) == ("–", "–")
    step = speed[speed.Decoding == "1 tok/step"]
    assert len(step) == 1 and step.iloc[0]["identical text %"] == "100.0"

    t1 = R.table1(f, None, MODELS)
    assert "1 tok/step" in set(t1.Decoding)
    t3 = R.table3(f, None, MODELS)
    d4 = [(r["Decoding"], r["tau"]) for r in t3.to_dict("records") if r["Model"] == "SD D=4"]
    # tau 2 is not "the highest tau"; the reference's tau column is blank, never "2" (its Decoding says what it is)
    assert d4 == [("conf 0.98", "0.98"), ("1 tok/step", ""), ("self-spec", "")]
    assert "2" not in set(R.speed_table(f, MODELS).tau) and "2" not in set(t1.tau)

    out = tmp_path / "rep"
    R.report(fid_cells, out, models=MODELS)
    md = (out / "speed.md").read_text()
    assert "identical text %" in md and "same answer %" in md and "accuracy [95% CI]" in md and "80.0" in md
    assert "Wilson 95% interval" in (out / "table1.md").read_text()
    csv = R.read_frame(out / "cells.csv")
    for col in ("acc_lo", "acc_hi", "n", "identical_text_pct", "same_answer_pct", "fidelity_n"):
        assert col in csv.columns
    assert csv.identical_text_pct.notna().sum() == 4


def test_stale_fidelity_is_ignored(fid_cells):
    cell = fid_cells / "sd-D4" / "gsm8k_sdlm" / "prob_conf_D4_tau0.98" / "cell.json"
    rows = json.loads(cell.read_text())
    rows[0]["provenance"]["time_utc"] = "2027-01-01T00:00:00Z"  # the cell ran again after its fidelity.json
    cell.write_text(json.dumps(rows))
    with pytest.warns(UserWarning, match="another run"):
        f = R.aggregate(fid_cells)
    assert f[f.cell_path == str(cell)].identical_text_pct.isna().all()


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:4] == b"\x89PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _training_json(folder: Path, curve: list | None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    data = {"mode": "nsp", "max_steps": 8, **({"tpf_curve": curve} if curve is not None else {})}
    (folder / "sdlm_training.json").write_text(json.dumps(data))
    return folder / "sdlm_training.json"


def _curve(scale: float, held: bool = False) -> list[dict]:
    """A probe curve; ``held``: with the held-out losses the probe records since the claim run."""
    return [{"step": s, "train_seconds": 10.0 * s, "n_prompts": 8, "max_new_tokens": 96, "probe_seconds": 3.0,
             "tpf": {"prob_conf_tau0.98": 1.0 + scale * s, "prob_conf_tau0.82": 1.1 + 2 * scale * s,
                     "self_speculative": 1.2 + 3 * scale * s}}
            | ({"heldout_loss": {"loss_pos0": 0.5 + s / 100, "loss_pos1": 2.0, "loss_clean": 0.4}} if held else {})
            for s in (0, 4, 8)]


def test_tpf_curves_and_figure(cells, tmp_path):
    ck = tmp_path / "checkpoints"
    files = {"sd-D4": _training_json(ck / "sd-D4", _curve(0.1)), "sd-D8": _training_json(ck / "sd-D8", _curve(0.2, held=True)),
             "base-ar": _training_json(ck / "base-ar", None)}  # an older / AR checkpoint: no tpf_curve
    curves = R.load_tpf_curves(files)
    assert set(curves.model) == {"sd-D4", "sd-D8"} and len(curves) == 2 * 3 * 3
    r = curves[(curves.model == "sd-D8") & (curves.step == 8) & (curves.decoder == "self_speculative")].iloc[0]
    assert (r.tpf, r.train_seconds, r.n_prompts, r.max_new_tokens) == (pytest.approx(1.2 + 3 * 0.2 * 8), 80.0, 8, 96)
    assert r.heldout_loss_pos0 == pytest.approx(0.58)  # 0.5 + 8/100, on every decoder's row of that step
    assert curves[curves.model == "sd-D4"].heldout_loss_pos0.isna().all()  # an older curve: no held-out loss
    assert R.load_tpf_curves(list(files.values())).model.tolist() == curves.model.tolist()  # key = folder name
    assert R.load_tpf_curves([files["base-ar"]]).empty and R.load_tpf_curves(None).empty
    assert R.curve_label("prob_conf_tau0.82") == "conf 0.82" and R.curve_label("self_speculative") == "self-spec"

    out = tmp_path / "rep"
    R.write_report(R.aggregate(cells), out, models=MODELS, training=files)
    w, h = _png_size(out / "fig_tpf_vs_steps.png")
    assert (w, h) == (round(4.6 * 2 * 110), round(3.6 * 110))  # two panels: the two checkpoints with a curve
    R.write_report(R.aggregate(cells), out, models=MODELS, training=[files["base-ar"]])
    assert _png_size(out / "fig_tpf_vs_steps.png") == (500, 300)  # the "no TPF curves" placeholder, no crash
    # without explicit files: those beside the cells' checkpoints (the `checkpoint` column)
    f = R.aggregate(cells)
    f.loc[f.model == "sd-D4", "checkpoint"] = str(ck / "sd-D4")
    assert R.training_files(f) == {"sd-D4": files["sd-D4"]}
    R.write_report(f, out, models=MODELS)
    assert _png_size(out / "fig_tpf_vs_steps.png") == (round(4.6 * 110), round(3.6 * 110))


def test_table1_renders_all_eight_paper_columns_and_the_paper_average(tmp_path):
    """GPQA and IFEval complete the paper's Table 1: with a cell for each of the eight benchmarks the table has
    the eight columns in the paper's order and an Avg, for the measured row and the published row alike."""
    tasks = ["gsm8k_sdlm", "math500_sdlm", "gpqa_sdlm", "humaneval_sdlm", "humaneval_plus_sdlm", "mbpp_sdlm",
             "mbpp_plus_sdlm", "ifeval_sdlm"]
    accs = [0.80, 0.50, 0.30, 0.60, 0.55, 0.62, 0.40, 0.58]
    for task, acc in zip(tasks, accs):
        write_cell(tmp_path, "sd-D4", task, "prob_conf_D4_tau0.98", alg="prob_conf", D=4, tau=0.98, acc=acc, tpf=2.0,
                   tps=50.0)
    t = R.table1(R.aggregate(tmp_path), R.load_paper_numbers(PAPER), MODELS)
    cols = ["GSM8K", "MATH", "GPQA", "HumanEval", "HumanEval+", "MBPP", "MBPP+", "IFEval"]
    assert [c for c in t.columns if c in cols + ["Avg"]] == cols + ["Avg"]
    measured, paper = t[t.Source == "measured"].iloc[0], t[t.Source == "paper"].iloc[0]
    assert measured["Avg"].startswith(f"{100 * sum(accs) / 8:.1f} ")  # 54.4, with the mean TPF (2.00)
    # SDLM-3B D=4 tau .98 (spec section 7): 84.6 60.8 28.3 67.1 59.8 65.4 40.5 57.1 -> mean 57.95
    assert paper["GPQA"] == "28.3 (2.26)" and paper["IFEval"] == "57.1 (1.38)"
    assert paper["Avg"].startswith("58.0 ") or paper["Avg"].startswith("57.9 ")
