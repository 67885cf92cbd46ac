"""ICE benchmark: time to connected and checks sent, icerelay's agent vs aioice.

Run with ``python -m benchmarks.ice`` (or ``make bench-ice``); see :mod:`benchmarks.ice.bench`.
"""
