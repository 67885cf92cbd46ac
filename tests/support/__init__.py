"""Shared helpers for icerelay's tests.

- :mod:`tests.support.ports`: free UDP/TCP ports on loopback (single or consecutive).
- :mod:`tests.support.netns`: network namespaces with hosts, a Linux NAT (nftables masquerade) and a
  'public' network, built and always torn down per test; run commands or Python inside them.
- :mod:`tests.support.coturn`: start coturn's ``turnserver`` (loopback or in a namespace), wait
  for it, stop it.
- :mod:`tests.support.stunraw`: a minimal, independent Binding request/response codec so helpers
  can poll a STUN server without depending on the code under test.

Fixtures that wrap them are registered in ``tests/conftest.py``.
"""
