"""The ``rstick`` command line, a thin click layer over the library (installed as rstick_cli)."""
