"""Write a small Llama Hugging Face directory (random weights, the tiny tokenizer) that
`trtserve build --backend tensorrt` turns into an engine small enough to carry to the GPU machine
(tests/gpu/run_engine_dir_check.sh stage). Usage: python tests/gpu/prebuild_tiny_llama.py DIR"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engine"))

from tiny_hf import (  # noqa: E402
    random_weights,
    write_config,
    write_safetensors,
    write_tiny_tokenizer,
)

from engine.config import ModelConfig  # noqa: E402

# large enough for TensorRT's fused attention (head_dim 16); vocab = the tiny tokenizer's
SMALL = ModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                    intermediate_size=128, vocab_size=32, tie_word_embeddings=False)


def main(directory: Path) -> None:
    write_config(directory, hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128)
    write_safetensors(directory / "model.safetensors", random_weights(SMALL, seed=5))
    write_tiny_tokenizer(directory)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
