"""Pure-Python scheduling: sequences, block ids (allocator, tables, prefix cache), in-flight
batching, sampling, stop logic.

Imports no web, executor or device framework; the engine is reached only through the
`Executor` protocol in `scheduler.plan`.
"""
