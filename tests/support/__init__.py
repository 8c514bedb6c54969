"""Helpers shared by the tests: labs, targets, images, raw frames (fixtures are in conftest)."""
