"""Edge capture nodes and the central listener that tags their streams.

``soundwatch edge`` (:mod:`soundwatch.edge.node`) captures on a small device, computes the
log-mel frames there and sends them over ZeroMQ; ``soundwatch serve``
(:mod:`soundwatch.edge.server`) receives the frames of many edges into a live pipeline.
The wire format is :mod:`soundwatch.edge.wire`; docs/edge.md describes it all.
"""
