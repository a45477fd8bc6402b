"""The ``cmah`` commands, one module per command group; :mod:`service.cli` imports only the group of the
command being run (so ``cmah serve`` checks its data directory before torch loads, and the GPU machine,
which has no FAISS or pydantic, runs ``train``, ``eval`` and ``refit-heads``).

Each module has ``add_parser(sub, name, help)``, which registers the command ``name`` and its flags.
"""
