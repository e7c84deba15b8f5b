"""HTTP front end: Triton generate/SSE, KServe v2, OpenAI routes, metrics, CLI."""
