"""sdlm.report on synthetic cell.json files: the frame, Table 1 / Table 3 values, published numbers placed
beside matching configurations only, speed-ups, rendering (md, LaTeX, HTML, PNG) and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sdlm import report as R

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "results" / "paper" / "paper_numbers.csv"
HW = {"machine": "x86_64", "cpu_count": 2, "torch_threads": 2}


def write_cell(root: Path, model: str, task: str, decoder: str, *, alg: str, D: int | None = None,
               tau: float | None = None, acc: float, tpf: float, tps: float, n: int = 10, hw=HW,
               metric: str | None = None) -> Path:
    metric = metric or R.PRIMARY_METRIC[task]
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
    assert recs[0] == {"Model": "AR-SFT", "D": "", "Decoding": "AR", "tau": "", "Source": "measured",
                             "GSM8K": "80.0", "MBPP": "60.0", "Avg": "70.0"}
    assert recs[1]["Source"] == "paper" and recs[1]["GSM8K"] == "85.8" and recs[1]["MBPP"] == "68.5"
    assert recs[1]["Avg"] == "77.2"  # (85.8 + 68.5) / 2: the columns shown, not the paper's 8-benchmark average
    # SD D=4 tau .98: measured then paper (84.6 (2.15), 65.4 (1.66))
    i = next(k for k, r in enumerate(recs) if r["Model"] == "SD D=4" and r["tau"] == "0.98")
    assert recs[i]["Source"] == "measured" and recs[i]["GSM8K"] == "79.8 (1.50)" and recs[i]["MBPP"] == "59.8 (1.50)"
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
        ("AR-SFT", "AR", "measured", "80.0"), ("AR-SFT", "AR", "paper", "85.8"),
        ("SD D=4", "conf 0.98", "measured", "79.8 (1.50)"), ("SD D=4", "conf 0.98", "paper", "84.6 (2.15)"),
        ("SD D=4", "self-spec", "measured", "79.0 (3.00)"), ("SD D=4", "self-spec", "paper", "85.1 (3.62)"),
        ("SD D=8", "conf 0.98", "measured", "79.8 (3.00)"),
        ("SD D=8", "self-spec", "measured", "79.0 (6.00)"),
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
    assert sorted(p.name for p in out.iterdir()) == sorted([*R.REPORT_FILES, "cells.csv", "batches.csv"])
    md = (out / "table1.md").read_text()
    assert "| SD D=4  | 4   | conf 0.98  | 0.98  | paper    | 84.6 (2.15) | 65.4 (1.66) | 75.0 (1.90) |" in md
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
