"""Snakemake script of rule prepare_sft: chat records from the configured components -> one JSONL.

Components: a built-in source (sdlm.sft_data.BUILTIN_SOURCES: ``gsm8k`` / ``math`` train in the paper's
boxed-answer chat format, ``mbpp`` validation + train as MBPP chat prompts; from SDLM_DATA_DIR, else the hub), a
chat JSONL path (sdlm.sft_data.read_chat_jsonl), or ``hub:<dataset id>`` read
with ``datasets.load_dataset`` (needs the network or a warm cache at run time) and mapped to chat records
from a ``messages`` column or a ``prompt``/``response`` column pair.
"""

import json
import sys
from pathlib import Path

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)

from sdlm.provenance import atomic_write_jsonl  # noqa: E402
from sdlm.sft_data import BUILTIN_SOURCES, DataError, read_chat_jsonl  # noqa: E402


def hub_records(c):
    import datasets

    name = c["source"].removeprefix("hub:")
    ds = datasets.load_dataset(name, c.get("config"), split=c.get("split") or "train")
    wanted = [c[k] for k in ("messages", "prompt", "response") if c.get(k)]
    missing = [w for w in wanted if w not in ds.column_names]
    if missing:
        raise DataError(f"sft component {name}: no column(s) {missing}; the dataset has {ds.column_names}")
    if c.get("limit"):
        ds = ds.select(range(min(int(c["limit"]), len(ds))))
    out = []
    for i, ex in enumerate(ds):
        if c.get("messages"):
            msgs = [{"role": m["role"], "content": m["content"]} for m in ex[c["messages"]]]
        elif c.get("prompt") and c.get("response"):
            msgs = ([{"role": "system", "content": c["system"]}] if c.get("system") else []) + [
                {"role": "user", "content": ex[c["prompt"]]}, {"role": "assistant", "content": ex[c["response"]]}]
        else:
            raise DataError(f"sft component {name}: give 'messages' or 'prompt' + 'response' column names")
        out.append({"messages": msgs})
        if (i + 1) % 100000 == 0:
            print(f"[sdlm] {name}: {i + 1} records", flush=True)
    return out


records = []
for c in json.loads(sm.params.components):
    src = c["source"]
    if src in BUILTIN_SOURCES:
        recs = BUILTIN_SOURCES[src](limit=c.get("limit"))
    elif src.startswith("hub:"):
        recs = hub_records(c)
    else:
        path = Path(src) if Path(src).is_absolute() else Path(sm.params.repo) / src
        recs = read_chat_jsonl(path, limit=c.get("limit"))
    print(f"[sdlm] {src}: {len(recs)} chat records", flush=True)
    records += recs
if not records:
    raise SystemExit("no SFT records")
atomic_write_jsonl(sm.output[0], records)
print(f"[sdlm] wrote {len(records)} records to {sm.output[0]}", flush=True)
