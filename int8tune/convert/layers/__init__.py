"""One module per family of Caffe layers; importing this package imports each of them, which fills
LAYER_CONVERTERS. A new module here is picked up without any other edit."""

import pkgutil
from importlib import import_module

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        import_module(f"{__name__}.{_info.name}")
