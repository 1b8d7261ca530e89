"""Judging placements: dispatch rules, trace replay, the analytic all-to-all calculator."""
