"""ICE agents as subprocesses, for tests and benchmarks that run them in network namespaces.

- :mod:`.agent`: ``python -m tests.interop.ice_agents.agent`` runs one ICE agent (icerelay's or
  aioice's) and talks JSON lines on stdin/stdout: it prints its credentials and candidates,
  reads the peer's, connects, exchanges a few datagrams and reports timings and checks sent.
- :mod:`.session`: the test side: starts two agents (anywhere: a namespace or here), relays the
  signalling between them, collects the reports.
- :mod:`.topology`: namespaces for two sites behind NATs (or linked directly, with netem delay).
"""
