"""The object directory: membership, object locations, subscriptions.

Not built yet (the directory issue).  Until then every node runs standalone;
names and ownership live in the node's own object table.
"""
