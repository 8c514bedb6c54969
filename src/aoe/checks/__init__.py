"""Putting an AoE target to the test: the conformance suite (`aoe conformance`) and the
fuzzer (`aoe fuzz`), both driving a target through a raw-socket probe."""
