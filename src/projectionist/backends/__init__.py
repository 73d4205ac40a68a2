"""Event store backends: ``memory``, and a package each for ``sqlite`` and ``postgres``;
``projectionist.factory`` picks one by URL.
"""
