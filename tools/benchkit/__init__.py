"""Pieces of `tools/bench`: the lab it runs in, the initiator worker, the scenarios and the
report. Only `tools/bench` and the tests import this package."""
