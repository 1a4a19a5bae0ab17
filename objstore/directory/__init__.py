"""The object directory: cluster membership, object locations, names, subscriptions.

* :mod:`~objstore.directory.state` — the bookkeeping, pure (no sockets, no clock).
* :mod:`~objstore.directory.server` — the grpclib service the head node runs.
* :mod:`~objstore.directory.persist` — durable state: SQLite (embedded) or Redis,
  written behind in batches off the event loop.
* :mod:`~objstore.directory.client` — a node's link to the directory (register,
  heartbeats, batched reports, one subscription stream, reconnect with backoff),
  and a small admin client for tools.
* :mod:`~objstore.directory.api` — the client's seams: ``NodeView`` (what it reads
  of its node), ``DirectoryListener`` (what it tells it), ``Link`` (gRPC or in-process).
* :mod:`~objstore.directory.book` — the node side's pure books.
* :mod:`~objstore.directory.codec` — rows to and from the columnar ``LocationTable``.
"""
