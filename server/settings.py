"""Server settings: every `trtserve serve` option, each readable from env `TRTSERVE_<NAME>`.

Engine and scheduler defaults are taken from their dataclasses; the CLI reads
its defaults from here. Nothing else in the server reads the environment.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine.options import EngineOptions
from scheduler.config import SchedulerConfig

_S = SchedulerConfig()  # scheduler defaults, defined once there
_E = EngineOptions()  # engine defaults, defined once there


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRTSERVE_", extra="forbid", frozen=True)

    model: str = Field(_E.model, description="Model to serve: registry name (the embedded "
                       "SmolLM2 by default), a .gguf file or a Hugging Face directory.")
    cache_dir: str | None = Field(_E.cache_dir, description="Cache root for built ONNX "
                                  "graphs / TensorRT engines (default ~/.cache/trtserve).")
    engine_dir: str | None = Field(_E.engine_dir, description="Serve this `trtserve build` "
                                   "output directory as built (no rebuild; its limits are "
                                   "adopted, larger flags refused).")
    backend: Literal["auto", "onnxruntime", "tensorrt"] = Field(
        _E.backend, description="Executor: tensorrt on a supported GPU, else onnxruntime.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        _E.dtype, description="Graph / engine precision; auto: the backend's own (float32 on "
        "onnxruntime CPU, float16 on GPUs).")
    q4_decode: bool = Field(_E.q4_decode, description="onnxruntime CPU with a Q4 GGUF: run "
                            "single-sequence decode steps through the 4-bit MatMulNBits graph "
                            "(same weights exactly; ~120 MB more memory, plus a contiguous copy "
                            "of the decoding sequence's past, resident as it grows: ~46 KB a "
                            "position for SmolLM2).")
    cuda_graphs: bool = Field(_E.cuda_graphs, description="onnxruntime CUDA: replay decode "
                              "steps as CUDA graphs (one captured session per padded batch and "
                              "context bucket, made on first use).")
    device_sampling: bool = Field(_E.device_sampling, description="onnxruntime CUDA: choose "
                                  "tokens on the GPU (greedy, sampled, penalised and log-prob "
                                  "rows; only ids and the rows that need top_logprobs cross to "
                                  "the host). Off: every row's logits are copied back.")
    cpu_precision: Literal["exact", "fast"] = Field(
        _E.cpu_precision, description="Arithmetic of that 4-bit single-token graph: exact "
        "(float32 activations) or fast (activations quantized to int8 per block of 32, as "
        "llama.cpp does; faster, greedy tokens may differ). No effect with --no-q4-decode.")
    cpu_threads: int | None = Field(_E.cpu_threads, ge=1, description="onnxruntime CPU: "
                                    "threads per graph run (intra-op); default one per core. "
                                    "1 avoids stalls when other processes share the cores.")
    host: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0 in containers).")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (Triton's HTTP port).")
    metrics_port: int = Field(8002, ge=0, le=65535, description="Second listener serving only "
                              "/metrics (Triton's metrics port); 0 disables it. /metrics is "
                              "also served on --port.")
    max_batch_size: int = Field(_S.max_batch_size, ge=1,
                                description="Sequences per engine step at most.")
    max_num_tokens: int | None = Field(
        None, ge=1, description=f"Token budget per step (chunked prefill). Default: the "
        f"backend's (256 on onnxruntime-cpu, where prefill is compute-bound and smaller chunks "
        f"keep running streams moving), else {_S.max_num_tokens}.")
    max_model_len: int | None = Field(
        _E.max_context, ge=2, description="Prompt + output tokens per request at most (the "
        "executor's context limit); default: the model's maximum context.")
    kv_cache_blocks: int | None = Field(_E.kv_cache_blocks, ge=1, description="Exact number "
                                        "of KV blocks; overrides --kv-cache-fraction.")
    kv_cache_fraction: float = Field(_E.kv_cache_fraction, gt=0.0, le=1.0, description="Share "
                                     "of free device/host memory for the KV cache.")
    block_size: int = Field(_E.block_size, ge=1, description="Tokens per KV block.")
    max_queue_size: int = Field(_S.max_queue_size, ge=0, description="Waiting requests at "
                                "most; more get 503 + Retry-After. 0 = unbounded.")
    scheduler_policy: Literal["max_utilization", "guaranteed_no_evict"] = Field(
        _S.policy, description="max_utilization packs and may preempt (recompute); "
        "guaranteed_no_evict reserves prompt+max_tokens at admission.")
    enable_prefix_caching: bool = Field(_S.enable_prefix_caching,
                                        description="Reuse KV blocks of shared prompt prefixes.")
    request_timeout: float = Field(600.0, ge=0.0, description="Seconds a request may take in "
                                   "total (queue + generation) before it is aborted; 0 = none.")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body "
                                "accepted; larger ones get 413.")
    max_prompt_chars: int | None = Field(
        None, ge=1, description="Longest text prompt (or sum of chat message texts) in "
        "characters, checked before tokenising; longer ones get 400. Default: "
        "32 x the model's max context in tokens.")
    max_chat_messages: int | None = Field(
        None, ge=1, description="Messages per chat request at most (400 beyond). Default: the "
        "model's max context in tokens (every message costs at least one token).")
    max_word_list: int = Field(256, ge=1, description="Entries at most in each of bad_words, "
                               "stop_words (Triton) and stop (OpenAI); 400 beyond.")
    max_word_list_chars: int = Field(16384, ge=1, description="Total characters at most in "
                                     "each of bad_words, stop_words and stop; 400 beyond.")
    max_logit_bias: int = Field(300, ge=0, description="Entries at most in logit_bias (OpenAI) "
                                "and embedding_bias_words/_weights (Triton); 400 beyond.")
    parse_processes: int = Field(2, ge=0, description="Worker processes that parse request "
                                 "bodies over 16 KiB (json.loads holds the GIL, so threads "
                                 "would stall the event loop); 0 = parse them on "
                                 "--tokenize-threads instead.")
    tokenize_threads: int = Field(2, ge=1, description="Threads that tokenise prompts and "
                                  "render chat templates off the event loop.")
    body_read_timeout: float = Field(30.0, ge=0.0, description="Seconds a client gets to send "
                                     "its whole request body after the headers; slower ones "
                                     "get 408 and the connection is closed. 0 = no limit.")
    keep_alive_timeout: float = Field(60.0, gt=0.0, description="Seconds an idle keep-alive "
                                      "connection stays open. Longer than clients' own pool "
                                      "expiry (httpx 5 s, aiohttp 15 s) so the client, not the "
                                      "server, closes idle connections: a server close racing a "
                                      "new request on that connection drops the request.")
    api_server_count: int = Field(1, ge=0, le=64, description="HTTP front-end processes. 0: "
                                  "one process runs HTTP and the engine loop. N >= 1: the engine "
                                  "loop runs in its own process and N processes share the ports, "
                                  "each parsing, tokenising and streaming its requests "
                                  "(docs/host-path.md says when it pays).")
    drain_timeout: float = Field(30.0, ge=0.0, description="At SIGTERM, seconds in-flight "
                                 "requests get to finish before they are aborted.")
    api_key: SecretStr | None = Field(None, description="Require `Authorization: Bearer <key>` "
                                      "on every route except health and /metrics.")
    cors_origins: str = Field("", description="Comma-separated origins allowed by CORS "
                              "(off when empty).")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        "info", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text, or "
                                                "as one JSON object per line.")
    stats_interval: float = Field(10.0, ge=0.0, description="Seconds between the stats lines "
                                  "(running, waiting, KV use, tok/s) logged while the engine "
                                  "is busy; 0 turns them off.")
    served_model_name: Annotated[tuple[str, ...], NoDecode] = Field(
        (), description="Model name(s) clients use (OpenAI `model`, Triton/KServe model name); "
        "several allowed, the first is the one listed. Default: the model's own name.")
    chat_template: str | None = Field(None, description="A Jinja chat template file used "
                                      "instead of the model's own (OpenAI chat route).")

    @field_validator("api_key")
    @classmethod
    def _non_empty_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        return value

    @field_validator("served_model_name", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):  # env / one CLI word: comma- or space-separated
            value = [value]
        if isinstance(value, (list, tuple)):
            return tuple(n for v in value for n in str(v).replace(",", " ").split())
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServerSettings:
        if self.metrics_port and self.port and self.metrics_port == self.port:
            raise ValueError("--metrics-port must differ from --port (or be 0)")
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
