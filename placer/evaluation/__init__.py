"""Judging placements: trace replay and the analytic all-to-all calculator."""
