"""Pure-Python scheduling: sequences, the KV block pool, in-flight batching, sampling, stop logic.

Imports no web, executor or device framework; the engine is reached only through the
`Executor` protocol in `scheduler.plan`.
"""
