"""Checkpoint storage for spotrain: fsspec URLs, atomic commits, checksums, retention, run record.

This package imports neither TensorFlow nor Ray, and nothing from ``trainer`` or ``cluster``.
"""
