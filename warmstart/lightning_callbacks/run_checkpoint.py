"""Deprecated alias of :mod:`warmstart.pretraining.run_checkpoint` (the SSL engine moved out of the callbacks package).

Importing it warns once; it goes away in the next release.
"""

from .._deprecated import alias_module

alias_module(globals(), "warmstart.pretraining.run_checkpoint")
