"""Open-vocabulary segmentation: windows, dense features, and a colour scene segmented by a
real ViT whose patch tokens are known (a timm ViT with no blocks, its patch embedding set to
average each patch's pixels) with the colour-word text side of `_colour_pair`."""
import numpy as np
import pytest
import torch
from PIL import Image

from _colour_pair import Aligned, colour_pair
from alignprobe.backbones import create_vision_encoder
from alignprobe.errors import ValidationError
from alignprobe.metrics import segmentation_scores
from alignprobe.probe.evals import dense_features, evaluate_segmentation, segment
from alignprobe.probe.evals.segmentation import _windows
from helpers import images, save_hf_vision

RED, BLUE, GREEN, GREY = (230, 20, 20), (20, 20, 230), (20, 230, 20), (128, 128, 128)
CLASSES = [["background"], ["red"], ["blue", "navy"], ["green"]]


@pytest.fixture(scope="module")
def colour_vit(tmp_path_factory):
    import timm
    from timm.models._hub import save_for_hf

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=3, depth=0, num_heads=1, num_classes=0, final_norm=False)
    with torch.no_grad():
        w = torch.zeros_like(model.patch_embed.proj.weight)  # (3, 3, 8, 8)
        for c in range(3):
            w[c, c] = 1.0 / 64
        model.patch_embed.proj.weight.copy_(w)
        model.patch_embed.proj.bias.zero_()
        model.pos_embed.zero_()
    d = tmp_path_factory.mktemp("colourvit")
    save_for_hf(model, d, safe_serialization=True)
    return create_vision_encoder(d, pooling="mean")


def _to_rgb_space(x):
    # the patch token is the patch mean of (pixel - 0.5) / 0.5, per channel
    return torch.nn.functional.normalize((x + 1) / 2, dim=-1)


def _scene():
    """48 x 80: red left / blue right over a grey strip, a green square inside the red."""
    img = np.zeros((48, 80, 3), np.uint8)
    mask = np.zeros((48, 80), np.uint8)
    img[:32, :40], mask[:32, :40] = RED, 1
    img[:32, 40:], mask[:32, 40:] = BLUE, 2
    img[8:24, 8:24], mask[8:24, 8:24] = GREEN, 3
    img[32:], mask[32:] = GREY, 0
    return Image.fromarray(img), mask


def _interior(mask, margin=6):
    """Pixels farther than `margin` from any label change (the bilinear blend zone)."""
    h, w = mask.shape
    keep = np.ones_like(mask, bool)
    for y in range(h):
        for x in range(w):
            y0, y1, x0, x1 = max(0, y - margin), y + margin + 1, max(0, x - margin), x + margin + 1
            keep[y, x] = (mask[y0:y1, x0:x1] == mask[y, x]).all()
    return keep


def test_windows_follow_the_reference_placement():
    assert _windows(48, 80, 32, 16) == [(0, 0, 32, 32), (0, 16, 32, 48), (0, 32, 32, 64),
                                        (0, 48, 32, 80), (16, 0, 48, 32), (16, 16, 48, 48),
                                        (16, 32, 48, 64), (16, 48, 48, 80)]
    assert _windows(20, 90, 32, 30) == [(0, 0, 20, 32), (0, 30, 20, 62), (0, 58, 20, 90)]
    assert _windows(10, 10, 32, 16) == [(0, 0, 10, 10)]


def test_sliding_windows_segment_the_colour_scene(colour_vit):
    vision, text, _, text_to_space = colour_pair()
    img, mask = _scene()
    (pred,) = segment(colour_vit, text, _to_rgb_space, text_to_space, [img], CLASSES,
                      templates=["a {} region."], background_threshold=0.5, logit_scale=10.0,
                      progress=False)
    assert pred.shape == mask.shape and pred.dtype == np.int64
    inner = _interior(mask)
    assert inner.sum() > 0.4 * mask.size
    assert np.array_equal(pred[inner], mask[inner].astype(np.int64))
    # grey is equally close to every colour: below the threshold, so background
    assert (pred[36:, :] == 0).all()
    # without the threshold the grey strip goes to some colour class
    (loose,) = segment(colour_vit, text, _to_rgb_space, text_to_space, [img], CLASSES,
                       templates=["a {} region."], progress=False)
    assert (loose[40:] != 0).all() and np.array_equal(loose[:24, 30:34], pred[:24, 30:34])


def test_evaluate_segmentation_on_a_seg_dir(colour_vit, tmp_path):
    _, text, _, text_to_space = colour_pair()
    img, mask = _scene()
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    img.save(tmp_path / "images" / "scene.png")
    ignored = mask.copy()
    ignored[30:34] = 255  # an unlabelled band
    Image.fromarray(ignored).save(tmp_path / "masks" / "scene.png")
    (tmp_path / "classes.txt").write_text("background\nred\nblue, navy\ngreen\n")
    row = evaluate_segmentation(colour_vit, text, _to_rgb_space, text_to_space,
                                f"seg:{tmp_path}", templates=["a {} region."],
                                background_threshold=0.5, logit_scale=10.0, progress=False)
    (pred,) = segment(colour_vit, text, _to_rgb_space, text_to_space, [img], CLASSES,
                      templates=["a {} region."], background_threshold=0.5, logit_scale=10.0,
                      progress=False)
    expect = segmentation_scores(pred, ignored, 4)
    assert row["miou"] == pytest.approx(expect["miou"]) and row["miou"] > 0.8
    assert row["pixel_acc"] == pytest.approx(expect["pixel_acc"])
    assert set(row) == {"miou", "pixel_acc", "iou_background", "iou_red", "iou_blue", "iou_green"}


def test_an_image_larger_than_the_window_and_short_side(colour_vit):
    _, text, _, text_to_space = colour_pair()
    img, mask = _scene()
    big = img.resize((160, 96), Image.NEAREST)
    (pred,) = segment(colour_vit, text, _to_rgb_space, text_to_space, [big], CLASSES,
                      templates=["a {} region."], background_threshold=0.5, logit_scale=10.0,
                      short_side=48, progress=False)
    assert pred.shape == (96, 160)
    small = np.asarray(Image.fromarray(mask).resize((160, 96), Image.NEAREST))
    inner = _interior(small, margin=10)
    assert (pred[inner] == small[inner]).mean() == 1.0


def test_dense_features_in_the_concat_layout(tmp_path):
    # 16 px, patch 8: a 2 x 2 grid small enough to check by index
    save_hf_vision(tmp_path, hidden_size=16, num_hidden_layers=1, intermediate_size=32, image_size=16,
                   processor={"do_resize": True, "size": {"height": 16, "width": 16}, "image_mean": [0.5] * 3,
                              "image_std": [0.5] * 3})
    enc = create_vision_encoder(tmp_path, pooling="concat")
    [img] = images(1, sizes=[(16, 16)])
    grid, prefix = enc.encode_patches([img], return_prefix=True)
    dense = dense_features(enc, [img])
    assert dense.shape == (1, 2, 2, 32) and enc.dim == 32
    assert torch.allclose(dense[0, 1, 0], torch.cat([prefix[0, 0], grid[0, 1, 0]]))
    with pytest.raises(ValidationError, match="token pooling"):
        dense_features(create_vision_encoder(tmp_path, pooling="pooler"), [img])


def test_segmentation_figure_is_written(tmp_path):
    from alignprobe.reports.segmentation_figure import class_colours, colourise, segmentation_figure

    img, mask = _scene()
    pred = mask.astype(np.int64).copy()
    pred[:4] = 2
    target = mask.copy()
    target[30:34] = 255
    names = ["background", "red", "blue", "green"]
    fig = segmentation_figure([img, img], [pred, pred], [target, target], names,
                              tmp_path / "seg.png", title="colour scene")
    data = (tmp_path / "seg.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert len(fig.axes) == 6
    rgb = colourise(target, class_colours(4))
    assert np.allclose(rgb[31, 0], 0.55) and np.allclose(rgb[0, 0], class_colours(4)[1])
    with pytest.raises(ValidationError, match="outside the 4 classes"):
        colourise(np.full((2, 2), 7), class_colours(4))


def _aligned_on_a_seg_dir(colour_vit, root):
    """The colour pair as an aligned model, and the colour scene written as a `seg:` directory at ``root``."""
    _, text, _, text_to_space = colour_pair()
    img, mask = _scene()
    for sub in ("images", "masks"):
        (root / sub).mkdir()
    img.save(root / "images" / "a.png")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    (root / "classes.txt").write_text("background\nred\nblue\ngreen\n")
    return Aligned(colour_vit, text, _to_rgb_space, text_to_space)


def test_segment_aligned_writes_scores_and_a_figure(colour_vit, tmp_path):
    from alignprobe.probe.evals import evaluate_aligned, segment_aligned

    aligned = _aligned_on_a_seg_dir(colour_vit, tmp_path)
    row = segment_aligned(aligned, f"seg:{tmp_path}", figure=tmp_path / "fig.png",
                          templates=["a {} region."], background_threshold=0.5, progress=False)
    assert row["miou"] > 0.8 and (tmp_path / "fig.png").stat().st_size > 1000
    # the head's exp(t) = 10 is the softmax scale, so the threshold acts as with logit_scale=10
    same = evaluate_aligned(aligned, segmentation=f"seg:{tmp_path}", templates=["a {} region."],
                            background_threshold=0.5, progress=False)
    assert same == pytest.approx(row)
    with pytest.raises(ValidationError, match="nothing to evaluate"):
        evaluate_aligned(aligned)


@pytest.mark.parametrize("head,init,centred,warned", [
    ("star", "center", None, True), ("mlp", "center", None, True), ("star", "zeros", None, False),
    ("linear", "center", None, False), ("star", "auto", True, True), ("star", "auto", False, False)])
def test_non_linear_heads_from_the_centred_bias_are_flagged_for_dense_tasks(colour_vit, tmp_path, caplog, head,
                                                                             init, centred, warned):
    """Star heads from the small-data recipe's centred LayerNorm bias segmented shapes-seg at 0.39
    object-only mIoU against 1.00 from zeros (README): `segment` and `eval --segmentation` say so."""
    from alignprobe.probe.evals import evaluate_aligned, segment_aligned

    aligned = _aligned_on_a_seg_dir(colour_vit, tmp_path)
    aligned.info = {"train_config": {"image_head": head, "text_head": head, "norm_bias_init": init}}
    if centred is not None:  # what "auto" did, as the model file records it
        aligned.info["norm_bias_centred"] = {"image": centred, "text": False}
    for run in (segment_aligned, lambda a, d, **k: evaluate_aligned(a, segmentation=d, **k)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="alignprobe.segment"):
            run(aligned, f"seg:{tmp_path}", templates=["a {} region."], progress=False)
        flagged = [r.getMessage() for r in caplog.records if "norm-bias-init zeros" in r.getMessage()]
        assert bool(flagged) is warned
        if warned:
            assert f"{head} vision head" in flagged[0] and "--head linear" in flagged[0]
