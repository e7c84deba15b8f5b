"""The graph a model runs: built once per (weights, builder code, dtype, block size, ...) into the
cache (engine/cache.py), or found there; `prepare_model` is `trtserve prepare`.

A cached graph is keyed on the code that wrote it (`BuilderSource`): the builder's declared
BUILDER_VERSION plus a digest of the graph-building sources, so any edit to them rebuilds.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine.backends import resolve_dtype, select_backend
from engine.cache import (
    ConsoleProgress,
    build_entry,
    cache_key,
    cache_root,
    config_to_json,
    entry_dir,
    weights_hash,
)
from engine.config import ModelError
from engine.options import EngineOptions
from engine.registry import ModelSource, read_source, resolve_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BuilderSource:
    """The code that writes a graph: its declared version and the files it is made of."""

    version: str  # engine/builder.py BUILDER_VERSION
    root: Path  # the engine package directory; files are named relative to it
    files: tuple[Path, ...]  # the builder, its dtype table, engine/graph/, engine/loaders/

    def digest(self) -> str:
        """`<version>-<12 hex digits of the sources' sha256>`."""
        h = hashlib.sha256()
        for path in self.files:
            h.update(str(path.relative_to(self.root)).encode() + b"\0" + path.read_bytes())
        return f"{self.version}-{h.hexdigest()[:12]}"


def builder_source() -> BuilderSource:
    """The installed graph builder (imported here, late: it pulls in onnx)."""
    import engine.builder as builder

    root = Path(builder.__file__).parent
    files = (Path(builder.__file__), root / "dtypes.py", *sorted((root / "graph").glob("*.py")),
             *sorted((root / "loaders").glob("*.py")))
    return BuilderSource(builder.BUILDER_VERSION, root, files)


@functools.cache
def builder_version() -> str:
    """The builder's version and source digest: a cached graph is rebuilt whenever the code that
    wrote it changed, even if nobody bumped BUILDER_VERSION."""
    return builder_source().digest()


def build_graph(source: ModelSource, dtype: str, options: EngineOptions, digest: str,
                out_dir: Path, rotary_op: bool = False) -> dict[str, Any]:
    """Write the graph and tokenizer of `source` into out_dir; return the manifest."""
    from engine.builder import build_model_graph

    logger.info("building the %s graph of %s (%s) into %s", dtype, source.name, source.path,
                out_dir)
    model = read_source(source, ConsoleProgress(f"loading {source.name}"))
    spec = build_model_graph(model.config, model.weights, out_dir, dtype=dtype,
                             block_size=options.block_size,
                             progress=ConsoleProgress(f"building {source.name}"),
                             blocks=model.blocks, cpu_precision=options.cpu_precision,
                             rotary_op=True if rotary_op else None)
    model.tokenizer.save(out_dir)
    return {"name": source.name, "source": str(source.path), "kind": source.kind,
            "config": config_to_json(model.config), "dtype": dtype,
            "block_size": options.block_size, "graph": asdict(spec),
            "inputs": list(spec.input_names), "outputs": list(spec.output_names),
            "builder_version": builder_version(), "weights_hash": digest}


def graph_entry(options: EngineOptions, dtype: str, rotary_op: bool) -> Path:
    """The cache directory holding the graph for these options, built first if absent."""
    source = resolve_model(options.model)
    digest = weights_hash(source.path)
    key = cache_key(digest, builder_version(), dtype, options.block_size, options.cpu_precision,
                    rotary_op)
    entry = entry_dir(cache_root(options.cache_dir), source.name, key)
    return build_entry(entry, lambda tmp: build_graph(source, dtype, options, digest, tmp,
                                                      rotary_op))


def prepare_model(options: EngineOptions) -> Path:
    """Build (or find) the cached ONNX graph for `options`; return its directory."""
    backend = select_backend(options)
    return graph_entry(options, resolve_dtype(options, backend), backend.rotary_op)


def graph_files(entry: Path, manifest: dict[str, Any], options: EngineOptions
                ) -> tuple[Path, Path | None]:
    """The entry's model graph, and its single-token MatMulNBits graph when it has one and
    options want it."""
    graph = manifest.get("graph", {})
    if "model_file" not in graph:
        raise ModelError(f"the manifest in {entry} names no graph; delete the directory to "
                         "rebuild it")
    q4 = graph.get("q4_model_file")
    return entry / graph["model_file"], (entry / q4 if q4 and options.q4_decode else None)
