"""Snakemake script of rule models_meta: the config's model metadata -> results/report/models.json."""

import json
import sys

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log)
from sdlm.provenance import atomic_write_json  # noqa: E402

meta = json.loads(sm.params.meta)
atomic_write_json(sm.output[0], meta)
print(f"[sdlm] {len(meta)} models -> {sm.output[0]}")
