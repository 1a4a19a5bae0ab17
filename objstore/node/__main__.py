"""``python -m objstore.node``: run a node (see ``--help``)."""

from objstore.node.main import main

if __name__ == "__main__":
    main()
