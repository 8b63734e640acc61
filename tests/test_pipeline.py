"""The Snakemake pipeline (Snakefile + pipeline/): DAGs of the shipped configs, config validation, and a
complete run of the tiny config (config/test.yaml) in a temporary working directory (the repository is not
written to): tables and figures, no-op rerun, one deleted cell reruns alone with the report, a killed
evaluation restarts cleanly, a changed tau adds only its cells, `snakemake --report`, `sdlm report`.

Snakemake runs in a subprocess (``python -m snakemake``), as a user would run it. About a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from procs import cmdline_mentions

REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "Snakefile"
TEST_CONFIG = REPO / "config" / "test.yaml"
DATA_DIR = Path(os.environ.get("SDLM_DATA_DIR") or REPO.parent / "shared" / "data")
REPORT_FILES = [f"{t}.{e}" for t in ("table1", "table3", "speed") for e in ("md", "tex", "html")] + [
    "fig_tau_ablation.png", "fig_throughput.png", "fig_tpf_vs_steps.png", "fig_claim.png", "provenance.md", "cells.csv",
    "batches.csv", "problems.csv", "load.csv",
    "models.json"]

pytestmark = pytest.mark.skipif(not (DATA_DIR / "gsm8k" / "test.jsonl").is_file(),
                                reason=f"benchmark data not found in {DATA_DIR} (set SDLM_DATA_DIR)")


def smk(workdir: Path, *args: str, config: Path | None = TEST_CONFIG, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(workdir), *args]
    if config is not None:
        cmd += ["--configfile", str(config)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


#: an evaluation cell's kind from its decoder folder, spelled out here (README "Pipeline"), not by sdlm.decoders
CELL_KINDS = [(r"ar", "eval_ar"), (r"step1_D[0-9]+", "eval_reference"),
              (r"self_speculative_D[0-9]+", "eval_self_speculative"),
              (r"(prob|entropy)_conf_D[0-9]+_tau[0-9]+\.[0-9]+", "eval_confidence")]


def _job_kind(rule: str, wildcards: dict[str, str]) -> str:
    """One rule per step (eval_cell, train) with the step's kind in a wildcard: the jobs counted by kind --
    confidence / self-speculative / AR / one-token-reference cells, NSP retrofits / AR-SFT baselines."""
    if rule == "eval_cell":
        (kind,) = [k for pattern, k in CELL_KINDS if re.fullmatch(pattern, wildcards["decoder"])]
        return kind
    if rule == "train":
        assert re.fullmatch(r"ar|D[0-9]+", wildcards["variant"]), wildcards
        return "ar_sft" if wildcards["variant"] == "ar" else "retrofit"
    return rule


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run -> {rule: count} (first table only), the eval_cell and train jobs
    split by kind (from each job's wildcards)."""
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal\s+(\d+)", output, re.S)
    if not m:
        return {}
    counts = {line.split()[0]: int(line.split()[1]) for line in m.group(1).splitlines() if line.strip()}
    counts["total"] = int(m.group(2))
    split = [r for r in ("eval_cell", "train") if r in counts]
    if split:
        kinds: dict[str, int] = {}
        for block in _job_blocks(output):
            rule = re.search(r"(?:local)?rule (\w+):", block)
            wc = re.search(r"wildcards: (.*)", block)
            if rule and rule.group(1) in split and wc:
                wildcards = dict(item.split("=", 1) for item in wc.group(1).split(", "))
                kind = _job_kind(rule.group(1), wildcards)
                kinds[kind] = kinds.get(kind, 0) + 1
        assert sum(kinds.values()) == sum(counts.pop(r) for r in split), "a job without wildcards"
        counts.update(kinds)
    return counts


def dry(workdir: Path, *args: str, config: Path | None = TEST_CONFIG) -> dict[str, int]:
    proc = smk(workdir, "-n", *args, config=config)
    out = proc.stdout + proc.stderr
    return {} if "Nothing to be done" in out else job_counts(out)


def write_config(path: Path, **changes) -> Path:
    cfg = yaml.safe_load(TEST_CONFIG.read_text())
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=True))  # reordered keys must not matter
    return path


# ================================================================================ dry runs of the shipped configs
@pytest.mark.parametrize("name, expected", [
    # every SDLM (model, D, task) adds its one-token-per-step reference cell (eval_reference) and every cell of
    # an SDLM model a fidelity job: demo 2 D x 3 tasks and 20 + 6 + 6 SDLM cells; paper 5 SDLMs x 8 tasks;
    ("smollm2.yaml", {"prepare_model": 1, "prepare_sft": 1, "retrofit": 2, "ar_sft": 1, "eval_confidence": 20,
                     "eval_self_speculative": 6, "eval_ar": 3, "eval_reference": 6, "fidelity": 32, "models_meta": 1,
                     "aggregate": 1, "report": 1, "all": 1, "total": 76}),
    # the 88 cells of the two 32B models (80 SDLM, 8 AR) in 4 shard jobs each, merged: eval_shard + merge_shards
    ("paper.yaml", {"prepare_model": 6, "prepare_sft": 1, "retrofit": 2, "ar_sft": 1, "eval_confidence": 256,
                    "eval_self_speculative": 32, "eval_ar": 16, "eval_reference": 32, "eval_shard": 352,
                    "merge_shards": 88, "fidelity": 400, "models_meta": 1, "aggregate": 1, "report": 1, "all": 1,
                    "total": 1190}),
])
def test_dag_of_shipped_configs(tmp_path, name, expected):
    assert dry(tmp_path, config=REPO / "config" / name) == expected
    assert not any(tmp_path.iterdir()) or set(p.name for p in tmp_path.iterdir()) <= {".snakemake"}


def test_default_config_is_the_claim_run(tmp_path):
    """No --configfile: config/config.yaml (found next to the Snakefile, whatever the working directory): the
    claim run -- materialise, SFT prompts, self-distillation, one retrofit, 5 HumanEval cells, 4 fidelity files,
    and (publish: true) each cell's samples and stats gzipped for committing."""
    assert dry(tmp_path, config=None) == dry(tmp_path, config=REPO / "config" / "config.yaml") == {
        "prepare_model": 1, "prepare_sft": 1, "distill_sft": 1, "retrofit": 1, "eval_confidence": 2,
        "eval_self_speculative": 1, "eval_ar": 1, "eval_reference": 1, "fidelity": 4, "publish_cell": 5,
        "models_meta": 1, "aggregate": 1, "report": 1, "all": 1, "total": 22}


def test_paper_commands(tmp_path):
    """The paper config: released checkpoints by hub id on GPU, retrofits through accelerate + ZeRO-1."""
    proc = smk(tmp_path, "-n", "-p", "results/checkpoints/qwen2.5-3b-D4/sdlm_training.json",
               "results/cells/sdlm-32b-d4/math500_sdlm/self_speculative_D4/cell.json",
               config=REPO / "config" / "paper.yaml")
    out = proc.stdout
    assert "accelerate launch --num_processes 8 --multi_gpu --mixed_precision bf16 -m sdlm.cli retrofit" in out
    assert f"--deepspeed {REPO}/pipeline/deepspeed/zero1.json" in out
    assert "pretrained=OpenGVLab/SDLM-32B-D4,alg=self_speculative,block_size=4" in out
    assert "max_new_tokens=2048,dtype=bf16,device=auto" in out
    assert "--system-prompt 'You are a helpful assistant.'" in out


def test_slurm_profile_dry_run(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    proc = smk(tmp_path, "-n", "--workflow-profile", str(REPO / "pipeline" / "profiles" / "slurm"),
               config=REPO / "config" / "paper.yaml")
    assert job_counts(proc.stdout + proc.stderr)["total"] == 1190


# ================================================================================ validation
@pytest.mark.parametrize("changes, needle", [
    ({"decoding.tuas": [0.9]}, "tuas"),                       # unknown key
    ({"colour": "blue"}, "colour"),                            # unknown top-level key
    ({"decoding.algs": ["prob_conf", "fast_conf"]}, "fast_conf"),  # unknown value
    ({"decoding.taus": [-0.5]}, "-0.5"),                       # out of range
    ({"tasks.gsm8k_sdlm.limit": "two"}, "two"),               # wrong type
    ({"models.tiny.retrofit.data": "nope"}, "nope"),           # dangling reference (checked after the schema)
    ({"models.tiny.retrofit.training": "slow"}, "slow"),
    ({"decoding.reference_tau": 0.5}, "0.5"),                  # a reference must accept one token per step
    ({"decoding.taus": [float("nan")]}, "decoding.taus[0] = nan is not a finite number > 0"),
    ({"tasks.gsm8k_sldm": {"limit": 2}}, "unknown task 'gsm8k_sldm'"),
    ({"models.tiny.source": "tiny:gpt2"}, "tiny:gpt2"),
    ({"eval.device": "gpu"}, "eval.device = 'gpu'"),
    ({"training.tiny.max_steps": 0}, "max_steps"),
])
def test_config_errors_name_the_culprit(tmp_path, changes, needle):
    cfg = write_config(tmp_path / "bad.yaml", **changes)
    proc = smk(tmp_path, "-n", config=cfg, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert needle in out, out[-3000:]
    assert not (tmp_path / "results").exists()  # failed before any job ran


def test_cell_outside_the_grid_is_refused(tmp_path):
    proc = smk(tmp_path, "-n", "results/cells/tiny-D4/gsm8k_sdlm/prob_conf_D4_tau0.5/cell.json", check=False)
    assert proc.returncode != 0
    assert "not in this configuration's grid" in proc.stdout + proc.stderr


# ================================================================================ reference cells and fidelity (dry)
def _job_blocks(out: str) -> list[str]:
    return re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", out)


def test_reference_cells_and_fidelity_in_the_dag(tmp_path):
    """config/test.yaml: every SDLM (model, task) gets a step1_D4 cell (prob_conf, tau 2.0, otherwise the same
    arguments as its confidence cell) and every SDLM cell a fidelity job reading the cell and its reference;
    the AR baseline gets none."""
    proc = smk(tmp_path, "-n", "-p")
    out = proc.stdout + proc.stderr
    counts = job_counts(out)
    assert (counts["eval_reference"], counts["fidelity"], counts["distill_sft"], counts["total"]) == (2, 6, 1, 23)
    blocks = _job_blocks(out)
    for task in ("gsm8k_sdlm", "mbpp_sdlm"):
        cells = f"results/cells/tiny-D4/{task}"
        ref = [b for b in blocks if "rule eval_cell:" in b and f"{cells}/step1_D4/cell.json" in b]
        conf = [b for b in blocks if "rule eval_cell:" in b and f"{cells}/prob_conf_D4_tau0.9/cell.json" in b]
        assert len(ref) == len(conf) == 1
        ref_cmd = re.search(r"sdlm eval (.*?) >", ref[0]).group(1)
        conf_cmd = re.search(r"sdlm eval (.*?) >", conf[0]).group(1)
        assert "alg=prob_conf,block_size=4,threshold=2.0," in ref_cmd
        assert ref_cmd.replace("threshold=2.0", "threshold=0.9").replace("step1_D4", "prob_conf_D4_tau0.9") == conf_cmd
        for dec in ("prob_conf_D4_tau0.9", "self_speculative_D4", "step1_D4"):
            fid = [b for b in blocks if "rule fidelity:" in b and f"{cells}/{dec}/fidelity.json" in b]
            assert len(fid) == 1, dec
            inputs = re.search(r"input: (.*)", fid[0]).group(1).split(", ")
            assert sorted(set(inputs)) == sorted({f"{cells}/{dec}/cell.json", f"{cells}/step1_D4/cell.json"})
    assert "tiny-ar/gsm8k_sdlm/ar/fidelity.json" not in out and "tiny-ar/gsm8k_sdlm/step1" not in out


def test_no_fidelity_for_ar_baselines_and_none_without_reference(tmp_path):
    proc = smk(tmp_path, "-n", "results/cells/tiny-ar/gsm8k_sdlm/ar/fidelity.json", check=False)
    assert proc.returncode != 0 and "not an SDLM model" in proc.stdout + proc.stderr
    cfg = write_config(tmp_path / "noref.yaml", **{"decoding.reference_tau": None})
    counts = dry(tmp_path, config=cfg)
    assert "eval_reference" not in counts and "fidelity" not in counts and counts["total"] == 15


# ================================================================================ a complete tiny run
CELLS = [
    "tiny-D4/gsm8k_sdlm/prob_conf_D4_tau0.9", "tiny-D4/gsm8k_sdlm/self_speculative_D4", "tiny-ar/gsm8k_sdlm/ar",
    "tiny-D4/mbpp_sdlm/prob_conf_D4_tau0.9", "tiny-D4/mbpp_sdlm/self_speculative_D4", "tiny-ar/mbpp_sdlm/ar",
    "tiny-D4/gsm8k_sdlm/step1_D4", "tiny-D4/mbpp_sdlm/step1_D4",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("pipeline")
    assert dry(wd)["total"] == 23
    proc = smk(wd, "--cores", "2")
    return wd, proc


def test_run_trains_on_self_distilled_data_with_a_tpf_probe(run):
    wd, _ = run
    sft = wd / "results" / "data" / "sft"
    prepared = [json.loads(x) for x in (sft / "gsm8k_tiny.jsonl").read_text().splitlines()]
    distilled = [json.loads(x) for x in (sft / "gsm8k_tiny.distilled.jsonl").read_text().splitlines()]
    assert len(distilled) == len(prepared) == 16
    assert [d["messages"][:-1] for d in distilled] == [p["messages"][:-1] for p in prepared]  # same prompts
    assert any(d["messages"][-1] != p["messages"][-1] for d, p in zip(distilled, prepared))  # the model's answers
    for ckpt in ("tiny-D4", "tiny-ar"):
        summary = json.loads((wd / "results" / "checkpoints" / ckpt / "sdlm_training.json").read_text())
        assert summary["config"]["data"].endswith("gsm8k_tiny.distilled.jsonl")
    d4 = json.loads((wd / "results" / "checkpoints" / "tiny-D4" / "sdlm_training.json").read_text())
    assert [p["step"] for p in d4["tpf_curve"]] == [0, 1, 2] and d4["data"]["n_records"] == 14


def test_run_produces_tables_and_figures(run):
    wd, proc = run
    out = wd / "results" / "report"
    for name in REPORT_FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for cell in CELLS:
        assert (wd / "results" / "cells" / cell / "cell.json").is_file()
    import pandas as pd

    frame = pd.read_csv(out / "cells.csv")
    assert len(frame) == 8 and set(frame["model"]) == {"tiny-D4", "tiny-ar"}
    assert frame["git_commit"].notna().all() and frame["config_hash"].notna().all()
    md = (out / "table1.md").read_text()
    assert "tiny Qwen2 NSP D=4" in md and "tiny Qwen2 AR-SFT" in md and "GSM8K" in md and "MBPP" in md
    assert "\\toprule" in (out / "table1.tex").read_text()
    assert "<table" in (out / "table3.html").read_text()
    assert (out / "fig_tau_ablation.png").read_bytes()[:4] == b"\x89PNG"
    # progress reached the logs: training steps and evaluation requests
    assert "[sdlm] step 2/2" in (wd / "results/logs/retrofit/tiny-D4.log").read_text()
    assert "generate_until" in (wd / "results/logs/eval/tiny-ar/gsm8k_sdlm/ar.log").read_text()
    assert (wd / "results/benchmarks/eval/tiny-ar/gsm8k_sdlm/ar.tsv").is_file()
    # fidelity: beside every SDLM cell; self-speculative decoding equals one-token-per-step decoding exactly
    import json

    for cell in CELLS:
        fid = wd / "results" / "cells" / cell / "fidelity.json"
        assert fid.is_file() == cell.startswith("tiny-D4/"), cell
    for task in ("gsm8k_sdlm", "mbpp_sdlm"):
        for dec in ("self_speculative_D4", "step1_D4"):
            res = json.loads((wd / "results/cells/tiny-D4" / task / dec / "fidelity.json").read_text())["tasks"][task]
            assert (res["n"], res["identical_text"], res["same_answer"]) == (2, 1.0, 1.0), (task, dec)
    spec = frame[frame["decoder"] == "self_speculative_D4"]
    assert (spec["identical_text_pct"] == 100.0).all() and (spec["same_answer_pct"] == 100.0).all()
    assert frame[frame["model"] == "tiny-ar"][["identical_text_pct", "same_answer_pct"]].isna().all().all()
    assert frame["acc_lo"].notna().all() and frame["acc_hi"].notna().all() and (frame["n"] == 2).all()
    speed = (out / "speed.md").read_text()
    assert "identical text %" in speed and "same answer %" in speed and "1 tok/step" in speed
    assert "0.0 [0.0, 65.8]" in speed  # 0 of 2 correct (random weights) with its Wilson interval
    assert (out / "fig_tpf_vs_steps.png").read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_a_no_op(run):
    wd, _ = run
    assert dry(wd) == {}


def test_deleted_cell_reruns_alone_with_the_report(run):
    wd, _ = run
    cell = wd / "results" / "cells" / CELLS[1] / "cell.json"
    retro = (wd / "results/checkpoints/tiny-D4/sdlm_training.json").stat().st_mtime
    cell.unlink()
    assert dry(wd) == {"eval_self_speculative": 1, "fidelity": 1, "aggregate": 1, "report": 1, "all": 1, "total": 5}
    assert dry(wd, str(cell.relative_to(wd))) == {"eval_self_speculative": 1, "total": 1}  # one cell as a target
    smk(wd, "--cores", "2")
    assert cell.is_file() and dry(wd) == {}
    assert (wd / "results/checkpoints/tiny-D4/sdlm_training.json").stat().st_mtime == retro


def test_partial_cell_is_not_done(run):
    """A cell folder with everything but cell.json (an interrupted evaluation) is redone, and the report
    never reads it."""
    wd, _ = run
    cell_dir = wd / "results" / "cells" / CELLS[2]
    (cell_dir / "cell.json").unlink()
    (cell_dir / ".cell.json.abc.tmp").write_text('[{"task": "gsm8k_sdlm"')  # a write cut short
    from sdlm.report import find_cells

    assert cell_dir / "cell.json" not in find_cells(wd / "results" / "cells")
    assert dry(wd)["eval_ar"] == 1
    smk(wd, "--cores", "2")
    assert dry(wd) == {}


def _rerun_until_evaluating(wd: Path, cell_name: str, *, target: bool):
    """Delete one cell, start Snakemake in its own session (the cell as target, or the whole workflow) and
    return (cell.json path, process) once the cell's evaluation job has started."""
    cell = wd / "results" / "cells" / cell_name / "cell.json"
    log = wd / "results/logs/eval" / (cell_name + ".log")
    cell.unlink()
    log.unlink()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(SNAKEFILE), "--directory", str(wd),
           "--configfile", str(TEST_CONFIG), "--cores", "2", *([str(cell.relative_to(wd))] if target else [])]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not log.exists() and time.time() - t0 < 120 and proc.poll() is None:
        time.sleep(0.05)
    assert log.exists(), "the evaluation job never started"
    return cell, proc


def test_killed_evaluation_restarts(run):
    """SIGKILL the whole run while a cell is evaluating: no cell.json is left behind, and after
    `--unlock` the next run redoes exactly that cell and the report."""
    wd, _ = run
    cell, proc = _rerun_until_evaluating(wd, CELLS[3], target=True)
    os.killpg(proc.pid, signal.SIGKILL)  # the job and Snakemake, like a node failure
    proc.wait()
    assert not cell.exists(), "killed before the end, yet cell.json exists"
    smk(wd, "--unlock")
    assert dry(wd) == {"eval_confidence": 1, "fidelity": 1, "aggregate": 1, "report": 1, "all": 1, "total": 5}
    smk(wd, "--cores", "2")
    assert cell.is_file() and dry(wd) == {}


def test_sigkill_of_snakemake_alone_resumes_as_the_readme_says(run):
    """README: after a hard kill, `snakemake --unlock`, then the same command. With Snakemake alone SIGKILLed,
    its running job must not finish behind its back (an output Snakemake marked incomplete would then exist and
    the rerun would refuse it): the job notices within a second and stops."""
    wd, _ = run
    cell, proc = _rerun_until_evaluating(wd, CELLS[0], target=False)
    os.kill(proc.pid, signal.SIGKILL)  # Snakemake only; its job is orphaned
    proc.wait()
    t0 = time.time()
    while cmdline_mentions(CELLS[0]) and time.time() - t0 < 30:
        time.sleep(0.2)
    assert cmdline_mentions(CELLS[0]) == [], "the orphaned job is still running"
    assert not cell.exists()
    smk(wd, "--unlock")
    smk(wd, "--cores", "2")  # the same command as before the kill
    assert cell.is_file() and dry(wd) == {}


def test_new_tau_adds_only_its_cells(run, tmp_path):
    wd, _ = run
    cfg = write_config(tmp_path / "taus.yaml", **{"decoding.taus": [0.9, 0.8]})
    assert dry(wd, config=cfg) == {"eval_confidence": 2, "fidelity": 2, "aggregate": 1, "report": 1, "all": 1, "total": 7}


def test_fidelity_reruns_with_its_cells(run):
    """A reference cell that runs again redoes the fidelity of every cell compared with it, and nothing else;
    a deleted fidelity.json is rebuilt alone (then the report)."""
    wd, _ = run
    ref = "results/cells/tiny-D4/mbpp_sdlm/step1_D4/cell.json"
    assert dry(wd, "--forcerun", ref) == {"eval_reference": 1, "fidelity": 3, "aggregate": 1, "report": 1, "all": 1,
                                          "total": 7}
    fid = wd / "results/cells/tiny-D4/gsm8k_sdlm/prob_conf_D4_tau0.9/fidelity.json"
    fid.unlink()
    assert dry(wd) == {"fidelity": 1, "aggregate": 1, "report": 1, "all": 1, "total": 4}
    smk(wd, "--cores", "2")
    assert fid.is_file() and dry(wd) == {}


def test_snakemake_report_and_cli_report(run, tmp_path):
    wd, _ = run
    smk(wd, "--report", str(tmp_path / "report.html"))
    assert (tmp_path / "report.html").stat().st_size > 10000
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "sdlm.cli", "report", "--cells", str(wd / "results" / "cells"),
                           "--out", str(out), "--paper", str(REPO / "config/paper_numbers.csv"),
                           "--models", str(wd / "results/report/models.json")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "table1.md").read_text() == (wd / "results/report/table1.md").read_text()


def test_publish_gzips_every_cell_for_committing(run):
    """``publish: true`` (the claim config) adds one job per finished cell: its samples and stats gzipped beside
    them, byte-identical to the files (deterministic gzip: a rerun rewrites the same bytes)."""
    import gzip

    wd, _ = run
    proc = smk(wd, "--cores", "1", "--config", "publish=True")  # Snakemake reads --config values as Python literals
    assert proc.stdout.count("publish_cell") >= len(CELLS) or "publish_cell" in proc.stderr
    for cell in CELLS:
        folder = wd / "results" / "cells" / cell
        task = cell.split("/")[1]
        for kind in ("samples", "stats"):
            plain = folder / f"{kind}_{task}.jsonl"
            packed = plain.with_name(plain.name + ".gz")
            assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()
            assert packed.read_bytes()[4:8] == b"\0\0\0\0"  # no mtime in the header
