"""Spilling primary copies to local disks or S3 under memory pressure, and restoring them.

The layers, each a module of its own:

* :mod:`.policy` (which primaries leave memory, pure), :mod:`.files` (which file
  holds which copy, pure), :mod:`.restore_queue` (restores by file, pure);
* :mod:`.records` (the record format, and the one check of a record read back),
  :mod:`.urls` (record URLs, the file and S3 key layout), :mod:`.errors`;
* :mod:`.backends` (local directories, S3) behind one protocol;
* :mod:`.manager` (:class:`~objstore.spill.manager.SpillManager`, the driver the
  node's object service calls) with :mod:`.restore`, and :mod:`.remote`
  (reading another node's S3 records).

The store is reached only through :class:`objstore.plasma.api.Store`.
"""
