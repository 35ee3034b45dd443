"""The one way the six public namespaces export their names: lazily (PEP 562).

Each namespace (``alignprobe``, ``alignprobe.backbones``, ``alignprobe.probe``,
``alignprobe.probe.pipelines``, ``alignprobe.metrics``, ``alignprobe.reports``)
declares a table ``{public name: "module" or ("module", "attribute")}`` and gets
``__getattr__``, ``__dir__`` and ``__all__`` from `lazy_exports`. The module is
imported on first use of one of its names, so importing a namespace is cheap:
torch, pandas and the model libraries load only when a name needs them.
"""
from __future__ import annotations

import importlib
from typing import Callable, Mapping, Sequence, Union

Target = Union[str, "tuple[str, str]"]


def lazy_exports(package: str, exports: Mapping[str, Target], *, subpackages: Sequence[str] = ()
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``.

    Args:
        package: the namespace's ``__name__``.
        exports: public name -> module (absolute, or relative to ``package`` when it starts
            with ".") holding an attribute of that name, or ``(module, attribute)`` when the
            public name differs from the attribute's (an alias such as ``evaluate``).
        subpackages: subpackages that ``dir()`` lists and attribute access imports.
    """
    table = {name: (target, name) if isinstance(target, str) else tuple(target) for name, target in exports.items()}
    public = sorted(table)

    def __getattr__(name: str):
        if name in table:
            module, attribute = table[name]
            value = getattr(importlib.import_module(module, package), attribute)
            return value
        if name in subpackages:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*public, *subpackages})

    return __getattr__, __dir__, public
