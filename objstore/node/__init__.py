"""The node process: ``python -m objstore.node``."""

from objstore.node.node import Node

__all__ = ["Node"]
