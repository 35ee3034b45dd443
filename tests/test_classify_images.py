"""`classify` on image files it cannot use: each error names the file and what is wrong with it."""
from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from alignprobe.cli import main
from alignprobe.config import EncodeOptions
from alignprobe.errors import ImageLoadError
from alignprobe.probe.pipelines.aligned import load_aligned
from alignprobe.probe.pipelines.train import SailRunConfig, train_pair

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = SailRunConfig(vision="pixels-8", text="bow", pairs="shapes:train?n=40", labelled="shapes:test?n=20",
                           retrieval=None, train=dict(out_dim=8, epochs=1, image_head="linear",
                                                      text_head="linear", device="cpu"))
    out = tmp_path_factory.mktemp("classify") / "run"
    return train_pair(config, out, options=EncodeOptions(device="cpu", quiet=True)).run_dir


def _folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(folder / "good.png")
    whole = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    return folder


def test_a_truncated_image_is_named_by_the_api(run_dir, tmp_path):
    folder = _folder(tmp_path)
    model = load_aligned(run_dir, device="cpu")
    with pytest.raises(ImageLoadError, match=r"truncated\.png.*could not be loaded") as info:
        model.classify([folder / "good.png", folder / "truncated.png"], ["circle", "square"])
    assert info.value.path.endswith("truncated.png")


def test_the_cli_names_the_truncated_image_without_a_traceback(run_dir, tmp_path):
    folder = _folder(tmp_path)
    res = CliRunner().invoke(main, ["classify", "--model", str(run_dir), "--images", str(folder),
                                    "--classes", "circle,square"])
    assert res.exit_code == 2, res.output
    assert "truncated.png" in res.output and "could not be loaded" in res.output
    assert "Traceback" not in res.output and "rerun to resume" not in res.output
