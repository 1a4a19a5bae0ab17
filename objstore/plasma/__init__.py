"""The node-local shared-memory store.

* :mod:`.table` — the object table, pure: entries, states, pins, owners, names;
  :mod:`.lifecycle` its state machine.
* :mod:`.memory` — the arena (:mod:`.arena`), its allocator (:mod:`.allocator`),
  fallback segments and the eviction order (:mod:`.eviction`).
* :mod:`.store` — the thin async store: applies the table's actions, keeps
  waiting gets, makes room, reports through its events.
* :mod:`.server` — the local socket server: frames in, object service calls,
  frames out.
* :mod:`.api` — the seams: the ``Store`` Protocol transfer and spill use, the
  ``StoreEvents`` the store reports through, the ``LocalObjects`` the server serves.
"""
