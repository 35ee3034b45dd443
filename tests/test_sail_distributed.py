"""Two processes under torchrun (gloo, CPU) compute what one process computes on the same global batch."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import sail_dist_worker as worker  # noqa: E402

from alignprobe.probe.training import distributed as D  # noqa: E402


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    if exe.exists():
        return [str(exe)]
    if shutil.which("torchrun"):
        return [shutil.which("torchrun")]
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def two_process_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "result.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [*_torchrun(), "--standalone", "--nproc_per_node", "2", str(HERE / "sail_dist_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("case", [f"{loss}-{norm}" for loss, norm in worker.LOSS_CASES])
def test_global_loss_and_gradients_match_one_process(two_process_result, case):
    assert two_process_result["world_size"] == 2
    rows = np.random.default_rng(1).permutation(worker.N_IMAGES)[: worker.BATCH]
    loss, norm = case.split("-")
    one_loss, one_grads = worker.loss_and_grads(D.SINGLE, rows, loss, norm)
    two_loss, two_grads = two_process_result["losses"][case]
    assert two_loss == pytest.approx(one_loss, rel=1e-6)
    for name, grad in one_grads.items():
        # relative to the gradient's scale: elements near zero differ by summation-order rounding
        diff = (two_grads[name] - grad).abs().max().item()
        assert diff <= 1e-5 * grad.abs().max().item() + 1e-9, (name, diff)


def test_training_two_processes_matches_one(two_process_result):
    one_state, one_val, one_train = worker.train(D.SINGLE)
    two_state, two_val, two_train = two_process_result["train"]
    np.testing.assert_allclose(two_val, one_val, rtol=1e-5)
    np.testing.assert_allclose(two_train, one_train, rtol=1e-5)
    for name, value in one_state.items():
        diff = (two_state[name] - value).abs().max().item()
        assert diff <= 1e-5 * value.abs().max().item() + 1e-7, (name, diff)
