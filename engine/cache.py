"""The on-disk cache of built model graphs: ~/.cache/trtserve/models/<name>-<key>/.

A cache entry holds model.onnx (+ its external data; for a Q4 GGUF on the fp32 CPU path also
model_q4.onnx, named by manifest["graph"]["q4_model_file"]), the tokenizer files and
manifest.json. The key hashes the source (file identity and content), the builder version, the
dtype, the KV block size and the CPU precision ("exact" | "fast": the single-token graph's
activations) the graph is built for, so an entry is rebuilt only when one of those changes.
Entries are built in a temporary sibling directory and renamed into place under a per-entry
file lock: readers never see half an entry.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine.config import ModelConfig, ModelError, RopeScaling
from engine.dtypes import EXACT

logger = logging.getLogger(__name__)

CACHE_ENV = "TRTSERVE_CACHE_DIR"
DEFAULT_ROOT = Path("~/.cache/trtserve")
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
FULL_HASH_MAX_BYTES = 256 * 1024 * 1024  # larger files: size + first/last SAMPLE_BYTES
SAMPLE_BYTES = 16 * 1024 * 1024
HASH_CHUNK = 4 * 1024 * 1024
HF_INPUT_GLOBS = ("config.json", "generation_config.json", "tokenizer.json",
                  "tokenizer_config.json", "special_tokens_map.json", "*.safetensors",
                  "model.safetensors.index.json")


def cache_root(override: str | None = None) -> Path:
    """The cache root: EngineOptions.cache_dir, else $TRTSERVE_CACHE_DIR,
    else ~/.cache/trtserve."""
    root = override or os.environ.get(CACHE_ENV) or str(DEFAULT_ROOT)
    return Path(root).expanduser()


def _file_digest(path: Path, digest: Any) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}:{size}:".encode())
    with path.open("rb") as f:
        if size <= FULL_HASH_MAX_BYTES:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
            return
        digest.update(f.read(SAMPLE_BYTES))
        f.seek(size - SAMPLE_BYTES)
        digest.update(f.read(SAMPLE_BYTES))


def source_files(path: Path) -> list[Path]:
    """The files whose bytes define a model: the .gguf, or an HF directory's inputs."""
    if path.is_file():
        return [path]
    files = {f for pattern in HF_INPUT_GLOBS for f in path.glob(pattern) if f.is_file()}
    return sorted(files)


def weights_hash(path: Path) -> str:
    """sha256 over the source files' names, sizes and contents (sampled when huge)."""
    digest = hashlib.sha256()
    for file in source_files(path):
        _file_digest(file, digest)
    return digest.hexdigest()


def cache_key(weights_digest: str, builder_version: str, dtype: str, block_size: int,
              cpu_precision: str = EXACT, rotary_op: bool = False) -> str:
    """Entry key: changes when the weights, the builder, the dtype, the block size, the CPU
    precision or the RoPE form (the RotaryEmbedding op, ONNX Runtime CUDA) change."""
    text = (f"{weights_digest}|builder={builder_version}|dtype={dtype}|block={block_size}"
            f"|cpu_precision={cpu_precision}|format={MANIFEST_FORMAT}"
            + ("|rotary_op=1" if rotary_op else ""))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(root: Path, name: str, key: str) -> Path:
    return root / "models" / f"{name}-{key}"


def is_complete(entry: Path) -> bool:
    return (entry / MANIFEST_FILE).is_file()


@contextmanager
def _entry_lock(entry: Path) -> Iterator[None]:
    """An exclusive lock per cache entry, so concurrent processes build it once."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with (entry.parent / f".{entry.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _remove_stale_temps(entry: Path) -> None:
    for stale in entry.parent.glob(f".tmp-{entry.name}-*"):
        logger.info("removing an interrupted build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def build_entry(entry: Path, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Return `entry`, building it with `build(tmp_dir) -> manifest` if absent (atomically)."""
    if is_complete(entry):
        return entry
    with _entry_lock(entry):
        if is_complete(entry):  # another process finished it while we waited
            return entry
        _remove_stale_temps(entry)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=entry.parent))
        try:
            manifest = build(tmp)
            write_manifest(tmp, manifest)
            tmp.chmod(0o755)  # mkdtemp made it private
            if entry.exists():  # a broken entry left by an older layout
                shutil.rmtree(entry)
            os.rename(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return entry


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    body = {"format": MANIFEST_FORMAT, "created": time.time(), **manifest}
    part = directory / f"{MANIFEST_FILE}.part"
    part.write_text(json.dumps(body, indent=1, default=str), encoding="utf-8")
    os.replace(part, directory / MANIFEST_FILE)


def read_manifest(entry: Path) -> dict[str, Any]:
    try:
        return json.loads((entry / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"unreadable cache manifest in {entry}: {exc}; delete the directory "
                         "to rebuild it") from None


def config_to_json(config: ModelConfig) -> dict[str, Any]:
    return asdict(config)


def config_from_json(data: dict[str, Any]) -> ModelConfig:
    scaling = data.get("rope_scaling")
    return ModelConfig(**{**data, "rope_scaling": RopeScaling(**scaling) if scaling else None,
                          "eos_token_ids": tuple(data.get("eos_token_ids", ()))})


class ConsoleProgress:
    """A tqdm progress bar on stderr fed by `(done, total)` callbacks (loaders, graph builder)."""

    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=max(total, 1), desc=self.label, file=self.stream,
                             mininterval=0.2, bar_format="{desc} |{bar:30}| {percentage:3.0f}% "
                             "{elapsed}")
        self._bar.n = min(done, self._bar.total)
        self._bar.refresh()
        if done >= total:
            self._bar.close()
            self._bar = None
