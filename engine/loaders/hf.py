"""Hugging Face model directories (config.json + *.safetensors, optionally sharded) -> (ModelConfig,
float32 weights). Only the Llama family is accepted; nothing here imports torch."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import ModelConfig, ModelError, RopeScaling
from engine.loaders.shapes import check_weights
from engine.loaders.st_reader import load_safetensors

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
INDEX_FILE = "model.safetensors.index.json"

ProgressFn = Callable[[int, int], None]  # (done, total)


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path.name} not found in {path.parent}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} must hold a JSON object")
    return data


def _rope_scaling(raw: dict[str, Any] | None, path: Path) -> RopeScaling | None:
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind == "default":
        return None
    if kind != "llama3":
        raise ModelError(f"unsupported rope_scaling type {kind!r} in {path}")
    defaults = RopeScaling()
    return RopeScaling(
        factor=float(raw.get("factor", defaults.factor)),
        low_freq_factor=float(raw.get("low_freq_factor", defaults.low_freq_factor)),
        high_freq_factor=float(raw.get("high_freq_factor", defaults.high_freq_factor)),
        original_max_position_embeddings=int(raw.get(
            "original_max_position_embeddings", defaults.original_max_position_embeddings)),
    )


def _ids(value: Any) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, list) else [int(value)]


def _eos_ids(config: dict[str, Any], model_dir: Path) -> tuple[int, ...]:
    ids = _ids(config.get("eos_token_id"))
    gen_path = model_dir / "generation_config.json"
    if gen_path.is_file():
        ids += _ids(read_json(gen_path).get("eos_token_id"))
    return tuple(dict.fromkeys(ids))


def config_from_hf(model_dir: Path) -> ModelConfig:
    """ModelConfig from a Llama-family config.json (+ generation_config.json eos ids)."""
    path = model_dir / "config.json"
    raw = read_json(path)
    archs = raw.get("architectures") or []
    if not any(a in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelError(f"unsupported architecture {archs} in {path}; supported: "
                         f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    try:
        hidden, heads = int(raw["hidden_size"]), int(raw["num_attention_heads"])
        return ModelConfig(
            hidden_size=hidden,
            num_layers=int(raw["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(raw.get("num_key_value_heads") or heads),
            head_dim=int(raw.get("head_dim") or hidden // heads),
            intermediate_size=int(raw["intermediate_size"]),
            vocab_size=int(raw["vocab_size"]),
            rope_theta=float(raw.get("rope_theta", 10000.0)),
            rope_scaling=_rope_scaling(raw.get("rope_scaling"), path),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            bos_token_id=_ids(raw.get("bos_token_id"))[0] if raw.get("bos_token_id") is not None
            else None,
            eos_token_ids=_eos_ids(raw, model_dir),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
        )
    except KeyError as exc:
        raise ModelError(f"{path} lacks required key {exc.args[0]!r}") from None
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"invalid value in {path}: {exc}") from None


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors shards in index order, or the single model file(s)."""
    index = model_dir / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelError(f"{index} has no weight_map")
        files = [model_dir / name for name in dict.fromkeys(weight_map.values())]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelError(f"no *.safetensors weights in {model_dir}")
    for file in files:
        if not file.is_file():
            raise ModelError(f"weight shard {file.name} listed in {INDEX_FILE} is missing")
    return files


def weights_from_hf(model_dir: Path, config: ModelConfig,
                    progress: ProgressFn | None = None) -> dict[str, np.ndarray]:
    files = weight_files(model_dir)
    weights: dict[str, np.ndarray] = {}
    for done, file in enumerate(files, 1):
        weights.update(load_safetensors(file))
        if progress is not None:
            progress(done, len(files))
    if config.tie_word_embeddings:
        weights.pop("lm_head.weight", None)
    check_weights(weights, config, model_dir)
    return weights


def load_hf(model_dir: str | Path,
            progress: ProgressFn | None = None) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Read a Hugging Face Llama directory: its config and float32 weights."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelError(f"model directory not found: {model_dir}")
    config = config_from_hf(model_dir)
    return config, weights_from_hf(model_dir, config, progress)
