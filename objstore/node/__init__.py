"""The node process, ``python -m objstore.node``: its wiring (:mod:`.node`), its
object service (:mod:`.objects`) and what that service needs of the packages
behind it (:mod:`.ports`)."""

from objstore.node.node import Node

__all__ = ["Node"]
