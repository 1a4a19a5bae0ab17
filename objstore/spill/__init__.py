"""Spilling primary copies to disk or S3 under memory pressure, and restoring them.

Not built yet (the spill issue).  The seam is ``PlasmaStore.spill_hook``: asked
for room, it spills and returns the bytes it freed, before the store falls
back to file-backed allocations.
"""
