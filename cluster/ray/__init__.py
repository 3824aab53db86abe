"""spotrain on Ray: the attempt runner and what runs inside Ray Train's controller.

Importing this package imports nothing from Ray; :mod:`cluster.ray.internals` is the only module
of ``cluster/`` that touches Ray's private APIs.
"""
