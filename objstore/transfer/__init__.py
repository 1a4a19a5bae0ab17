"""Moving objects between nodes: the chunked data plane and the pulling side.

* :mod:`~objstore.transfer.wire` — the data plane's frames (fixed headers).
* :mod:`~objstore.transfer.server` — serves chunks straight from shared memory,
  bounded per peer and overall (:mod:`~objstore.transfer.push` decides which
  sends run).
* :mod:`~objstore.transfer.peer` — the pulling side's wire client: three
  fetches, each under one deadline, over a pool of checked connections
  (:class:`~objstore.transfer.peer.PeerTransport` is the seam).
* :mod:`~objstore.transfer.manager` — pulls objects that gets here wait for into
  secondary copies: the pure policy of :mod:`~objstore.transfer.pull` turned
  into tasks, chunks CRC-checked before seal, the next source on failure.

The package reaches the store only through :mod:`objstore.plasma.api` and
knows nothing of spilling, the directory or the node (seams given at
construction: ``SpillFetch``, ``address_of``, ``restore``).
"""
