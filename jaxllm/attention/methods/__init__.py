"""Attention methods. Every module in this package registers its methods on import."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_info.name}")
