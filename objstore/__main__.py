"""``python -m objstore status|memory``: look at a node."""

from objstore.cli import main

if __name__ == "__main__":
    main()
