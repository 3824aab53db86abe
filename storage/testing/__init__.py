"""Test and benchmark helpers for storage (a real S3 server on loopback). Not used at run time."""
