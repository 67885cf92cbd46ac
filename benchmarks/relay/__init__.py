"""Media relay benchmark: icerelay's relay vs rtpengine 10.5 (userspace), see bench.py."""
