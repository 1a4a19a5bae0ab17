"""The node-local shared-memory object store (Plasma-style): object lifecycle and eviction."""
