"""Moving objects between nodes: pull and push managers, the chunked data plane.

Not built yet (the transfer issue).  The store already keeps what it needs:
secondary copies (``primary=False``) that are evictable in LRU order.
"""
