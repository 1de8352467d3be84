"""rstick's benchmark suite: ``python -m bench`` (``--help`` for the options).

Not collected by pytest (``norecursedirs``): it starts its own Redis on a free
loopback port and real worker processes, and prints a table of figures beside
a raw-Redis baseline measured in the same run.
"""
