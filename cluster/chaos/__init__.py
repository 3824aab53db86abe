"""``spotrain emulate``: an emulated multi-node Ray cluster on one machine, and chaos on it.

Only the CLI imports this wing; importing the package imports nothing from Ray.
"""
