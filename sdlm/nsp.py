"""NSP training rows and their collator (spec section 1), plus plain AR-SFT rows for the baseline.

A row is the clean chat sequence followed by B masked blocks (spec section 1)::

    input_ids : x_0 ... x_{n-1} | x_p1 M .. M | x_p2 M .. M | ...
    positions : 0   ... n-1     | p1 .. p1+D-1 | p2 .. p2+D-1 | ...

Every row is a dict of equal-length int lists:

* ``input_ids``, ``position_ids``;
* ``labels`` -- the training target *of each position itself* (already shifted: the logit at a position
  predicts its label; ``IGNORE`` = -100 elsewhere). NOT transformers' unshifted ``labels``: never hand
  them to a model's own loss. Block index i of a block at p has label ``x_{p+1+i}`` (no target is lost,
  unlike the reference's layout); clean positions are unlabelled unless ``clean_loss``;
* ``clean_targets`` -- next-token targets on the clean response tokens (and each turn's EOS), always
  filled, so the trainer can *log* the clean (AR) loss even when it does not train on it;
* ``block_index`` -- 0..D-1 inside blocks, -1 on clean tokens (and padding, after collation).

Decisions where the spec leaves room (documented in README "Retrofit training"):

* Response spans come from the chat template: each assistant turn's content is located in the rendered
  text and mapped to tokens through offsets. Candidate block starts of a turn run from its last header
  token (so the first response token is a target) to its last content token (so the turn's EOS is a
  target but never a block start).
* Empty assistant turns contribute nothing; a record with no assistant turn, or only empty ones, is
  skipped (:class:`RecordError` from the per-record functions; the ``build_*`` functions skip it, count
  it by reason and warn once). Responses shorter than D are kept: targets after the EOS are ignored, so
  such blocks simply have fewer labelled positions. At least one block is built for every kept record
  (the spec's formula can give 0 blocks for a 1-2 token response with D >= 7).
* Too long: with ``room = max(D, min(R * repeat, max_len // (repeat + 1)))`` (the block budget, R the
  number of candidate starts), a clean part longer than ``max_len - room`` is cut to that length (the
  end of the conversation goes) and a warning is issued; block starts whose first target falls beyond
  the cut are dropped. A prompt so long that no response token survives skips the record.
"""

from __future__ import annotations

import random
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from sdlm.masks import to_additive, training_visibility

IGNORE = -100


class RecordError(ValueError):
    """A chat record that cannot become a training row; the message names the record and the reason."""

    def __init__(self, where: str, reason: str, key: str):
        super().__init__(f"{where}: {reason}")
        self.key = key  # short reason, for counting skipped records


@dataclass
class ChatTokens:
    """A tokenised chat record: ids and, per non-empty assistant turn, ``(s, e)`` where ``s`` is its
    first content token and ``e`` the index just after its last content token (the turn's EOS)."""

    input_ids: list[int]
    spans: list[tuple[int, int]]
    n_assistant_turns: int


# ----------------------------------------------------------------------------------------------------
# Tokenising chat records


def _messages(record: Any, where: str) -> list[dict[str, str]]:
    msgs = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise RecordError(where, "record has no non-empty 'messages' list", "no messages")
    for m in msgs:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise RecordError(where, "every message needs string 'role' and 'content'", "bad message")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def tokenize_chat(record: dict, tokenizer: Any, *, where: str = "record") -> ChatTokens:
    """Tokenise a chat record with the tokenizer's chat template and find its assistant content spans.

    The template must be prefix-stable (rendering the first k messages is a prefix of rendering all);
    ChatML (Qwen2.5, SmolLM2) is. Raises :class:`RecordError` on a record without assistant turns.
    """
    msgs = _messages(record, where)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; NSP rows are built from chat-formatted records")
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    char_spans: list[tuple[int, int]] = []
    n_turns = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        n_turns += 1
        content = m["content"]
        if not content.strip():
            continue
        prefix = tokenizer.apply_chat_template(msgs[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(msgs[: i + 1], tokenize=False)
        if not (full.startswith(upto) and upto.startswith(prefix)):
            raise RecordError(where, "the chat template is not prefix-stable; cannot locate the response", "template")
        tail = upto[len(prefix):]
        at = tail.find(content)
        text = content
        if at < 0:
            text = content.strip()
            at = tail.find(text)
        if at < 0:
            raise RecordError(where, f"assistant turn {n_turns} not found in the rendered chat", "template")
        start = len(prefix) + at
        char_spans.append((start, start + len(text)))
    if n_turns == 0:
        raise RecordError(where, "record has no assistant turn", "no assistant turn")
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), list(enc["offset_mapping"])
    spans = []
    for cs, ce in char_spans:
        toks = [j for j, (a, b) in enumerate(offsets) if b > cs and a < ce and b > a]
        if toks and toks[0] >= 1:
            spans.append((toks[0], toks[-1] + 1))
    return ChatTokens(ids, spans, n_turns)


def _eos_ids(tokenizer: Any, ids: Sequence[int], spans: Sequence[tuple[int, int]], eos_ids: Iterable[int] | None) -> set[int]:
    """EOS ids for block targets: given ones, else the tokenizer's EOS plus the special token that closes
    each assistant turn in this template (``<|im_end|>`` for ChatML even with a base-model tokenizer)."""
    if eos_ids is not None:
        return {int(e) for e in eos_ids}
    out = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out |= {int(ids[e]) for _, e in spans if e < len(ids) and ids[e] in special}
    return out


def _clean_targets(ids: Sequence[int], spans: Sequence[tuple[int, int]], n: int) -> list[int]:
    """Next-token targets on response tokens and each turn's EOS: position j predicts ids[j+1]."""
    t = [IGNORE] * n
    for s, e in spans:
        for j in range(s - 1, e):
            if j + 1 < n:
                t[j] = int(ids[j + 1])
    return t


# ----------------------------------------------------------------------------------------------------
# NSP rows


def nsp_row(record: dict, tokenizer: Any, *, block_size: int, mask_token_id: int, max_len: int,
            rng: random.Random, repeat: int = 3, clean_loss: bool = False,
            eos_ids: Iterable[int] | None = None, where: str = "record", warn: bool = True) -> dict[str, Any]:
    """One NSP training row from one chat record (spec section 1; rules in the module doc).

    Returns the row dict plus ``meta`` (n_clean, n_blocks, truncated). Raises :class:`RecordError` for
    records that cannot give a row.
    """
    D = int(block_size)
    if D < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    ct = tokenize_chat(record, tokenizer, where=where)
    if not ct.spans:
        raise RecordError(where, "every assistant response is empty", "empty response")
    ids = ct.input_ids
    n = len(ids)
    cands = [p for s, e in ct.spans for p in range(s - 1, e)]
    room = max(D, min(len(cands) * repeat, max_len // (repeat + 1)))
    if max_len < D + 2:
        raise ValueError(f"max_len={max_len} is too small for block size {D}")
    truncated = False
    if n > max_len - room:
        keep = max_len - room
        if keep < ct.spans[0][0] + 1:
            raise RecordError(where, f"prompt too long ({ct.spans[0][0]} tokens before the first response, max_len {max_len})",
                              "prompt too long")
        if warn:
            warnings.warn(f"{where}: {n} clean tokens + block budget {room} exceed max_len {max_len}; "
                          f"clean part truncated to {keep} tokens", stacklevel=2)
        n, truncated = keep, True
        cands = [p for p in cands if p + 1 < n]
    x = [int(t) for t in ids[:n]]
    eos = _eos_ids(tokenizer, ids, ct.spans, eos_ids)
    clean_t = _clean_targets(ids, ct.spans, n)

    n_blocks = min(max_len - n, len(cands) * repeat) // D
    n_blocks = min(max(n_blocks, 1 if max_len - n >= D else 0), len(cands))
    starts = sorted(rng.sample(cands, n_blocks))

    input_ids, position_ids, block_index = list(x), list(range(n)), [-1] * n
    labels = list(clean_t) if clean_loss else [IGNORE] * n
    for p in starts:
        input_ids += [x[p]] + [int(mask_token_id)] * (D - 1)
        position_ids += list(range(p, p + D))
        block_index += list(range(D))
        tgt, stopped = [], False
        for i in range(D):
            t = p + 1 + i
            if stopped or t >= n:
                tgt.append(IGNORE)
                continue
            tgt.append(x[t])
            stopped = x[t] in eos
        labels += tgt
    if all(v == IGNORE for v in labels):
        raise RecordError(where, "no labelled target left", "no target")
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "labels": labels,
        "clean_targets": clean_t + [IGNORE] * (len(input_ids) - n),
        "block_index": block_index,
        "meta": {"n_clean": n, "n_blocks": len(starts), "truncated": truncated, "starts": starts},
    }


def ar_row(record: dict, tokenizer: Any, *, max_len: int, where: str = "record", warn: bool = True) -> dict[str, Any]:
    """One AR-SFT row (baseline): the clean sequence, next-token labels on response tokens + EOS.

    Too long: the first ``max_len`` tokens are kept, with a warning. Same row format as :func:`nsp_row`
    (no blocks), so the same collator (which then builds a plain causal mask) and trainer serve both.
    """
    ct = tokenize_chat(record, tokenizer, where=where)
    if not ct.spans:
        raise RecordError(where, "every assistant response is empty", "empty response")
    n, truncated = len(ct.input_ids), False
    if n > max_len:
        if warn:
            warnings.warn(f"{where}: {n} tokens exceed max_len {max_len}; truncated", stacklevel=2)
        n, truncated = max_len, True
    t = _clean_targets(ct.input_ids, ct.spans, n)
    if all(v == IGNORE for v in t):
        raise RecordError(where, f"prompt too long (no response token within max_len {max_len})", "prompt too long")
    return {
        "input_ids": [int(v) for v in ct.input_ids[:n]],
        "position_ids": list(range(n)),
        "labels": t,
        "clean_targets": list(t),
        "block_index": [-1] * n,
        "meta": {"n_clean": n, "n_blocks": 0, "truncated": truncated, "starts": []},
    }


@dataclass
class RowReport:
    """What happened to a list of records: kept rows, truncations, skips by reason (with examples)."""

    n_records: int = 0
    n_rows: int = 0
    n_truncated: int = 0
    n_blocks: int = 0
    n_tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"n_records": self.n_records, "n_rows": self.n_rows, "n_truncated": self.n_truncated,
                "n_blocks": self.n_blocks, "n_tokens": self.n_tokens, "skipped": dict(self.skipped),
                "skip_examples": self.examples[:5]}


def _build(records: Sequence[dict], make, what: str) -> tuple[list[dict], RowReport]:
    rep = RowReport(n_records=len(records))
    rows = []
    for i, rec in enumerate(records):
        try:
            row = make(rec, i)
        except RecordError as e:
            rep.skipped[e.key] += 1
            if len(rep.examples) < 5:
                rep.examples.append(str(e))
            continue
        rows.append(row)
        rep.n_truncated += bool(row["meta"]["truncated"])
        rep.n_blocks += row["meta"]["n_blocks"]
        rep.n_tokens += len(row["input_ids"])
    rep.n_rows = len(rows)
    if rep.n_truncated:
        warnings.warn(f"{what}: {rep.n_truncated} of {rep.n_records} records were too long and truncated", stacklevel=3)
    if rep.skipped:
        reasons = ", ".join(f"{k}: {v}" for k, v in rep.skipped.items())
        warnings.warn(f"{what}: skipped {sum(rep.skipped.values())} of {rep.n_records} records ({reasons}); "
                      f"first: {rep.examples[0]}", stacklevel=3)
    if not rows:
        raise RecordError(what, f"no usable record among {rep.n_records}"
                          + (f" (first problem: {rep.examples[0]})" if rep.examples else ""), "no rows")
    return rows, rep


def build_nsp_rows(records: Sequence[dict], tokenizer: Any, *, block_size: int, mask_token_id: int, max_len: int,
                   repeat: int = 3, clean_loss: bool = False, seed: int = 0,
                   eos_ids: Iterable[int] | None = None) -> tuple[list[dict], RowReport]:
    """NSP rows for many records: unusable ones skipped and counted, one summary warning per kind.

    Each record's block starts come from its own ``Random(f"{seed}:{index}")``, so a row does not depend
    on which other records are in the list. Raises :class:`RecordError` if no record is usable.
    """
    def make(rec: dict, i: int) -> dict:
        return nsp_row(rec, tokenizer, block_size=block_size, mask_token_id=mask_token_id, max_len=max_len,
                       rng=random.Random(f"{seed}:{i}"), repeat=repeat, clean_loss=clean_loss, eos_ids=eos_ids,
                       where=f"record {i}", warn=False)

    return _build(records, make, "NSP rows")


def build_ar_rows(records: Sequence[dict], tokenizer: Any, *, max_len: int) -> tuple[list[dict], RowReport]:
    """AR-SFT rows for many records (baseline), skipping/counting like :func:`build_nsp_rows`."""
    return _build(records, lambda rec, i: ar_row(rec, tokenizer, max_len=max_len, where=f"record {i}", warn=False),
                  "AR rows")


# ----------------------------------------------------------------------------------------------------
# Collation


@dataclass
class NSPCollator:
    """Right-pads rows into a batch and builds the 4-D additive block mask from position ids.

    Output (all (B, T) unless noted): ``input_ids`` (pad id on padding), ``position_ids`` (0 on padding),
    ``attention_mask`` (B, 1, T, T) additive float in ``mask_dtype`` from
    :func:`sdlm.masks.training_visibility` with ``valid`` so padding is never visible and rows stay
    independent, ``labels`` / ``clean_targets`` (``IGNORE`` on padding), ``block_index`` (-1 on padding).
    Rows without blocks (AR rows) get exactly the causal mask. ``mask_dtype`` must match the model's
    parameter dtype (it is cast under autocast).
    """

    block_size: int
    pad_token_id: int
    causal_attn: bool = False
    mask_dtype: torch.dtype = torch.float32
    pad_to_multiple_of: int | None = None

    def __call__(self, rows: Sequence[dict]) -> dict[str, torch.Tensor]:
        T = max(len(r["input_ids"]) for r in rows)
        if self.pad_to_multiple_of:
            T = -(-T // self.pad_to_multiple_of) * self.pad_to_multiple_of
        B = len(rows)

        def stack(key: str, pad: int) -> torch.Tensor:
            out = torch.full((B, T), pad, dtype=torch.long)
            for i, r in enumerate(rows):
                out[i, : len(r[key])] = torch.as_tensor(r[key], dtype=torch.long)
            return out

        valid = torch.zeros((B, T), dtype=torch.bool)
        for i, r in enumerate(rows):
            valid[i, : len(r["input_ids"])] = True
        position_ids = stack("position_ids", 0)
        visible = training_visibility(position_ids, self.block_size, causal_attn=self.causal_attn, valid=valid)
        return {
            "input_ids": stack("input_ids", self.pad_token_id),
            "position_ids": position_ids,
            "attention_mask": to_additive(visible, self.mask_dtype),
            "labels": stack("labels", IGNORE),
            "clean_targets": stack("clean_targets", IGNORE),
            "block_index": stack("block_index", -1),
        }
