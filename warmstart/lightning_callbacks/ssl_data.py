"""Deprecated alias of :mod:`warmstart.pretraining.ssl_data` (the SSL engine moved out of the callbacks package).

Importing it warns once; it goes away in the next release.
"""

from .._deprecated import alias_module

alias_module(globals(), "warmstart.pretraining.ssl_data")
