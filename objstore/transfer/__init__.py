"""Moving objects between nodes: the chunked data plane and the pulling side.

* :mod:`~objstore.transfer.wire` — the data plane's frames (fixed headers).
* :mod:`~objstore.transfer.server` — serves chunks straight from shared memory,
  bounded per peer and overall.
* :mod:`~objstore.transfer.manager` — pulls objects that gets here wait for into
  secondary copies: one pull per object, chunks over pooled connections within a
  bytes-in-flight cap, CRC-checked before seal, the next source on failure.
"""
