"""Checks of a pipeline configuration that its JSON schema cannot express. No torch.

``pipeline/rules/common.smk`` runs :func:`check_config` while Snakemake builds the DAG, so a bad value stops
the run before any job -- not after an hour of training. Each problem is one line naming the key and value:
duplicate YAML keys (a silent last-wins otherwise), thresholds that are not finite numbers > 0 (NaN passes
the schema's ``exclusiveMinimum``), unknown task names, devices, model sources, and code tasks without a
usable sandbox.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from sdlm.decoders import check_threshold
from sdlm.sources import HUB_ID_RE, TINY_ARCHS, source_kind
from sdlm.tasks import check_task_names, code_tasks

__all__ = ["DEVICE_RE", "ConfigError", "check_config", "load_yaml_strict"]

#: the device strings we accept anywhere (configs, model_args); cpu:N is what accelerate gives each CPU process
DEVICE_RE = re.compile(r"auto|cpu(?::\d+)?|mps(?::\d+)?|cuda(?::(\d+))?")


class ConfigError(ValueError):
    """A configuration value that would fail (or silently mislead) later; the message is one line."""


# ------------------------------------------------------------------------------------------ YAML
class _StrictLoader(yaml.SafeLoader):
    pass


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False):
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{key_node.start_mark.name}, line {line}: key {key!r} is given twice (first on line "
                              f"{seen[key]}); YAML would silently keep the last one")
        seen[key] = line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def load_yaml_strict(path: str | os.PathLike) -> Any:
    """A YAML file, with a duplicate key anywhere a :class:`ConfigError` naming file, line and key."""
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


# ------------------------------------------------------------------------------------------ tasks
def _check_tasks(names: Iterable[str]) -> None:
    try:
        check_task_names(list(names))
    except ValueError as e:
        raise ConfigError(f"config: tasks: {e}") from None


# ------------------------------------------------------------------------------------------ values
def _check_tau(where: str, value: Any, sweep: bool) -> None:
    if not isinstance(value, (int, float)):  # a YAML string such as "0.9" is a config mistake, not a number
        raise ConfigError(f"config: {where} = {value!r} is not a finite number > 0")
    try:
        tau = check_threshold(value)
    except ValueError:
        raise ConfigError(f"config: {where} = {value!r} is not a finite number > 0") from None
    if tau > 1 and sweep:
        # a sweep tau > 1 accepts one token per step: it is the reference cell (step1_D<D>) under another name
        raise ConfigError(f"config: {where} = {value!r} is > 1, which decodes one token per step: that is the "
                          "reference cell, set by decoding.reference_tau; sweep taus must be <= 1")
    if where == "decoding.reference_tau" and tau <= 1:
        raise ConfigError(f"config: {where} = {value!r} must be > 1 (the reference accepts one token per step)")


def _taus(config: Mapping) -> Iterable[tuple[str, Any, bool]]:
    """Every threshold of a config: (where, value, whether it is a sweep tau, which must be <= 1)."""
    dec = config.get("decoding") or {}
    for i, t in enumerate(dec.get("taus") or []):
        yield f"decoding.taus[{i}]", t, True
    if dec.get("reference_tau") is not None:
        yield "decoding.reference_tau", dec["reference_tau"], False
    for section in ("models", "tasks"):
        for name, entry in (config.get(section) or {}).items():
            for i, t in enumerate((entry or {}).get("taus") or []):
                yield f"{section}.{name}.taus[{i}]", t, True
    for name, preset in (config.get("training") or {}).items():
        for i, t in enumerate((preset or {}).get("probe_taus") or []):
            yield f"training.{name}.probe_taus[{i}]", t, False


def _check_device(where: str, device: Any) -> None:
    if device is None:
        return
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise ConfigError(f"config: {where} = {device!r} is not one of cpu, auto, cuda, cuda:N, mps")


def _check_source(where: str, source: Any, repo: Path, offline: bool) -> None:
    s = str(source)
    kind = source_kind(s, base=repo)
    if kind == "tiny":
        if s[5:] not in TINY_ARCHS:
            raise ConfigError(f"config: {where} = {s!r}: tiny test models are {', '.join('tiny:' + a for a in TINY_ARCHS)}")
        return
    if kind == "pypi":
        from sdlm.models import PYPI_SOURCES  # noqa: PLC0415 - torch import, only for pypi: sources

        if s[5:] not in PYPI_SOURCES:
            raise ConfigError(f"config: {where} = {s!r} is not a known pypi: source ({', '.join(sorted(PYPI_SOURCES))})")
        return
    p = Path(os.path.expanduser(s))
    p = p if p.is_absolute() else repo / p
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"config: {where} = {s!r} is a folder without config.json")
        return
    if kind == "folder" or not HUB_ID_RE.fullmatch(s):
        raise ConfigError(f"config: {where} = {s!r} is neither a folder nor a hub id (Org/Name), tiny: or pypi: source")
    if offline:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(s, "config.json")
        except Exception:  # noqa: BLE001 - an old huggingface_hub: leave it to prepare_model
            return
        if not isinstance(cached, str):
            raise ConfigError(f"config: {where} = {s!r}: offline: true, and this hub model is not in the local "
                              "Hugging Face cache")


# ------------------------------------------------------------------------------------------ entry point
def check_config(config: Mapping, *, repo: str | os.PathLike, files: Iterable[str | os.PathLike] = (),
                 check_sandbox: bool = True) -> None:
    """Raise :class:`ConfigError` (one line) for the first problem found; ``files`` are the YAML files the
    config came from (checked for duplicate keys)."""
    repo = Path(repo)
    for f in files:
        load_yaml_strict(f)
    for where, tau, sweep in _taus(config):
        _check_tau(where, tau, sweep)
    _check_tasks(config.get("tasks") or {})
    _check_device("eval.device", (config.get("eval") or {}).get("device"))
    offline = bool(config.get("offline"))
    for name, m in (config.get("models") or {}).items():
        _check_device(f"models.{name}.eval.device", ((m or {}).get("eval") or {}).get("device"))
        if (m or {}).get("source") is not None:
            _check_source(f"models.{name}.source", m["source"], repo, offline)
    for name, spec in (config.get("sft_data") or {}).items():
        distill = (spec or {}).get("self_distill") or {}
        _check_device(f"sft_data.{name}.self_distill.device", distill.get("device"))
    if check_sandbox and set(config.get("tasks") or {}) & code_tasks():
        from sdlm.scoring.sandbox import SandboxError, isolation

        try:
            isolation()
        except SandboxError as e:
            raise ConfigError(f"config: tasks include code tasks, but {e}") from None
