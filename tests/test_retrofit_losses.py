"""benchmarks/retrofit_losses.py: the diagnosis of the first claim run, on a tiny base model and its retrofit."""

from __future__ import annotations

import importlib.util
import io
import json
import random
from pathlib import Path

import pytest
import torch

from sdlm.models import save_model
from sdlm.testing import chat_record, tiny_model
from sdlm.train import RetrofitConfig, retrofit

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "retrofit_losses.py"
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _script():
    spec = importlib.util.spec_from_file_location("retrofit_losses", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("losses")
    model, tok = tiny_model("qwen2", seed=0)
    save_model(model, tok, d / "base")
    rng = random.Random(3)
    recs = []
    for k in range(40):  # alphabet runs: a pattern the mask positions learn in a few steps
        i, n = rng.randrange(26), rng.randrange(6, 12)
        recs.append(chat_record(f"{LETTERS[i]} {k}", " ".join(LETTERS[(i + j) % 26] for j in range(n))))
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    retrofit(RetrofitConfig(base=str(d / "base"), data=str(d / "chat.jsonl"), out=str(d / "ckpt"), block_size=4,
                            max_steps=12, lr=3e-3, batch_size=4, max_len=96, weight_decay=0.0, warmup=0,
                            probe_prompts=3), model=model, tokenizer=tok, records=recs[:-3], stream=io.StringIO())
    return d


def test_losses_of_base_and_retrofit_per_set(run, capsys):
    out = run / "losses.json"
    rc = _script().main(["--base", str(run / "base"), "--retrofit", str(run / "ckpt"), "--train", str(run / "chat.jsonl"),
                         "--heldout", "3", "--n-train", "8", "--max-len", "96", "--threads", "1", "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert got["rows"] == {"train": 8, "held-out MBPP": 3}
    tr = got["losses"]["train"]
    for model in ("base", "retrofit"):
        assert set(tr[model]) == {f"{m}_{n}" for m in ("loss", "top1") for n in ("clean", "pos0", "pos1", "pos2", "pos3")}
    # the base model's mask row is fresh (step 0): training is what teaches the block positions
    assert tr["retrofit"]["loss_pos1"] < tr["base"]["loss_pos1"] - 0.5
    assert "| held-out MBPP | 3 | retrofit |" in capsys.readouterr().out
    assert got["provenance"]["git"]["commit"]


def test_a_held_out_count_that_leaves_no_training_record_is_one_line(run):
    with pytest.raises(SystemExit, match=r"--heldout 40 must be between 1 and 39"):
        _script().main(["--base", str(run / "base"), "--retrofit", str(run / "ckpt"), "--train", str(run / "chat.jsonl"),
                        "--heldout", "40"])
