"""Deprecated alias of :mod:`warmstart.testing` (the synthetic YOLO dataset is a fixture for tests, demos and docs).

Importing it warns once; it goes away in the next release.
"""

from .._deprecated import alias_module

alias_module(globals(), "warmstart.testing")
