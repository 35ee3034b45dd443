"""The aligned vision encoder of a SAIL run as a transformers model (a vision tower for LLaVA).

    alignprobe.export_vision_tower("runs/dinov2__minilm", "exported/")
    import alignprobe, transformers
    tower = transformers.AutoModel.from_pretrained("exported/")      # no remote code

`import alignprobe` makes transformers' ``AutoConfig`` / ``AutoModel`` know the
``alignprobe_vision_tower`` model type without importing transformers (or torch) itself: a
post-import hook registers the config once transformers' auto-config module has loaded and the
model once its auto-model module has (at once for what is already loaded). Each registration
waits until the transformers modules it imports have finished loading, so the hook never imports
transformers code in the middle of transformers' own import. Names are loaded lazily.
"""
from __future__ import annotations

import importlib
import sys
import warnings

_EXPORTS = {
    "export_vision_tower": "alignprobe.probe.export.export",
    "AlignedVisionTowerConfig": "alignprobe.probe.export.configuration",
    "AlignedVisionTowerModel": "alignprobe.probe.export.tower",
    "register": "alignprobe.probe.export.tower",
}
__all__ = sorted(_EXPORTS)

# (what the stage imports, so must be fully loaded; what the stage serves, once loaded)
_CONFIG_STAGE = (("transformers.configuration_utils",), "transformers.models.auto.configuration_auto")
_MODEL_STAGE = (("transformers.configuration_utils", "transformers.modeling_utils",
                 "transformers.modeling_outputs"), "transformers.models.auto.modeling_auto")
_WATCHED = {"transformers.configuration_utils", "transformers.modeling_utils", "transformers.modeling_outputs",
            _CONFIG_STAGE[1], _MODEL_STAGE[1]}
_done: set[str] = set()


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'alignprobe.probe.export' has no attribute {name!r}")


def __dir__():
    return __all__


def _loading(name: str) -> bool:
    spec = getattr(sys.modules.get(name), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _due(stage) -> bool:
    needs, serves = stage
    return serves in sys.modules and not _loading(serves) and not any(_loading(n) for n in needs)


def _try_register() -> None:
    """Register what transformers has loaded and we have not registered yet."""
    stages = (("config", _CONFIG_STAGE, "alignprobe.probe.export.configuration", "register_config"),
              ("model", _MODEL_STAGE, "alignprobe.probe.export.tower", "register"))
    for key, stage, module, func in stages:
        # A module of ours still executing is the one whose own imports of transformers brought
        # us here (`import alignprobe.probe.export.tower` before transformers' auto-model module):
        # its names do not exist yet, and it registers itself when it has defined them.
        if key in _done or not _due(stage) or _loading(module):
            continue
        _done.add(key)
        try:
            getattr(importlib.import_module(module), func)()
        except Exception as exc:  # noqa: BLE001 - never break the user's `import transformers`
            warnings.warn(f"alignprobe could not register its vision tower with transformers' Auto classes "
                          f"({type(exc).__name__}: {exc}); call alignprobe.probe.export.register() to see why",
                          stacklevel=2)
    if len(_done) == 2:
        _uninstall()


# Plain classes, not importlib.abc ones: importlib.abc imports importlib.resources (tempfile,
# shutil, typing), which would make `import alignprobe` several times slower.
class _RegisteringLoader:
    """Runs the real loader of a watched transformers module, then registers what is due."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # the import system clears _initializing only after exec_module returns
        spec = getattr(module, "__spec__", None)
        if spec is not None:
            spec._initializing = False
        _try_register()

    def __getattr__(self, name):  # get_source, is_package, ... of the real loader
        return getattr(self._loader, name)


class _RegisterOnImport:
    """A post-import hook (a `sys.meta_path` finder) on the transformers modules in `_WATCHED`."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _WATCHED:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, _RegisterOnImport):
                continue
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterOnImport)]


def install_auto_registration() -> None:
    """Register the tower with transformers' Auto classes now for what is loaded, the rest when it loads."""
    _try_register()
    if len(_done) < 2 and not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


install_auto_registration()
