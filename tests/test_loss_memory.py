"""The memory-lean tiled sigmoid loss (raw features in, normalised slice by slice) and the step built on it.

The tiled loss no longer holds normalised copies of the features; it turns the
gradient w.r.t. the normalised features into the gradient w.r.t. the raw ones
in place (``(g - n (n . g)) / r``). These tests pin that this is the same
function and gradient as autograd through ``F.normalize`` and the naive logit
matrix -- the one-pass computation the engine ran before -- and that the step's
gradients do not depend on the tiling or on the number of passes.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from alignprobe.probe.training.config import TrainConfig
from alignprobe.probe.training.heads import AlignmentModel
from alignprobe.probe.training.losses import pairwise_sigmoid_loss
from alignprobe.probe.training.step import make_optimizer, run_head, train_step

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class LiveTensors(TorchDispatchMode):
    """Counts the bytes of the tensor storages that ops create while it is active.

    Every op's outputs are registered by storage (weakly: a storage counts while
    anything holds it); ``peak`` is the largest total seen after any op, and
    ``origin`` names the op that created each storage. CPU tensors have no
    allocator statistics, so this is how a test sees what is alive at once.
    """

    def __init__(self, *existing: torch.Tensor):
        super().__init__()
        self.live, self.peak = {}, 0
        self.existing = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key not in self.live and key not in self.existing and storage.nbytes():
                    self.live[key] = (StorageWeakRef(storage), storage.nbytes(), str(func))
        self.peak = max(self.peak, self.alive())
        return out

    def alive(self) -> int:
        return sum(nbytes for ref, nbytes, _ in self.live.values() if not ref.expired())

    def origins(self) -> list[str]:
        return [origin for ref, _, origin in self.live.values() if not ref.expired()]

    def sizes(self, origin: str) -> list[int]:
        return [nbytes for ref, nbytes, o in self.live.values() if not ref.expired() and o == origin]


def naive_reference(img, txt, positive_index, scale, bias):
    """Autograd through F.normalize and the full logit matrix: the plain definition."""
    logits = scale * F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T + bias
    labels = -torch.ones_like(logits)
    has = positive_index >= 0
    labels[torch.nonzero(has, as_tuple=True)[0], positive_index[has]] = 1.0
    return -F.logsigmoid(labels * logits).mean()


def leaves(dtype, zero_row=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = 3 * torch.randn(29, 6, generator=g, dtype=torch.float64)
    txt = 0.5 * torch.randn(33, 6, generator=g, dtype=torch.float64)
    if zero_row:
        img[4] = 0.0  # F.normalize keeps it zero (its norm is clamped to eps)
        txt[7] = 0.0
    positive_index = torch.randint(-1, 29, (33,), generator=g)
    t = torch.tensor(2.5, dtype=torch.float64)
    b = torch.tensor(-3.0, dtype=torch.float64)
    return [v.to(dtype).requires_grad_() for v in (img, txt, t, b)], positive_index


def loss_and_grads(chunk, dtype, zero_row=False):
    (img, txt, t, b), positive_index = leaves(dtype, zero_row)
    if chunk is None:
        loss = naive_reference(img, txt, positive_index, t.exp(), b)
    else:
        loss = pairwise_sigmoid_loss(img, txt, positive_index, t.exp(), b, chunk_size=chunk)
    loss.backward()
    return loss.detach(), [v.grad for v in (img, txt, t, b)]


@pytest.mark.parametrize("chunk", [1, 5, 29, 64])
@pytest.mark.parametrize("zero_row", [False, True])
def test_tiled_loss_on_raw_features_is_the_normalize_then_loss_gradient_exactly(chunk, zero_row):
    # In fp64 the two computations agree to rounding: the in-place gradient is the same formula.
    ref_loss, ref_grads = loss_and_grads(None, torch.float64, zero_row)
    loss, grads = loss_and_grads(chunk, torch.float64, zero_row)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-13)
    for got, want, name in zip(grads, ref_grads, ("image", "text", "scale", "bias")):
        torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-13, msg=name)


def test_tiled_loss_fp32_and_half_features_match_the_fp64_definition():
    _, ref_grads = loss_and_grads(None, torch.float64)
    _, grads = loss_and_grads(7, torch.float32)
    for got, want in zip(grads, ref_grads):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-7)
    (img, txt, t, b), positive_index = leaves(torch.bfloat16)
    loss = pairwise_sigmoid_loss(img, txt, positive_index, t.exp(), b, chunk_size=7)
    loss.backward()
    assert loss.dtype == torch.float32  # the loss runs in fp32 for half features
    assert img.grad.dtype == torch.bfloat16 and txt.grad.dtype == torch.bfloat16  # gradients in the inputs' dtype


def test_tiled_loss_keeps_only_its_inputs_for_the_backward():
    # The memory contract: no normalised copy of either side is saved for the
    # backward (each would be as large as the features), only the inputs themselves.
    (img, txt, t, b), positive_index = leaves(torch.float32)
    saved = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = pairwise_sigmoid_loss(img, txt, positive_index, t.exp(), b, chunk_size=8)
    big = [s for s in saved if s.numel() >= img.numel()]
    assert big and all(s.data_ptr() in (img.data_ptr(), txt.data_ptr()) for s in big)
    loss.backward()  # and the backward still runs from them
    assert img.grad.shape == img.shape


def test_tiled_loss_holds_two_gradient_buffers_and_a_few_tiles_at_most():
    # Before: normalised copies of both sides, their gradient buffers, the scaled
    # gradients and autograd's normalize backward -- 8x the features' bytes at the peak.
    n, d = 512, 256
    img, txt = torch.randn(n, d, requires_grad=True), torch.randn(n, d, requires_grad=True)
    features = 2 * n * d * 4
    with LiveTensors(img, txt) as live:
        loss = pairwise_sigmoid_loss(img, txt, torch.arange(n), torch.tensor(10.0), torch.tensor(-5.0), chunk_size=64)
        loss.backward()
    assert live.peak <= 1.25 * features  # the two gradient buffers, plus tiles and slices of 64 rows
    assert live.alive() <= 1.01 * features  # and those buffers became the .grad, not copied


@pytest.mark.parametrize("kind", ["linear", "star"])
def test_run_head_keeps_the_fp16_batch_for_the_backward_not_its_fp32_copies(kind):
    torch.manual_seed(0)
    head = AlignmentModel(32, 8, 16, kind, "linear", 2).image_head
    x = torch.randn(64, 32).half()
    with LiveTensors(x, *head.parameters()) as live:
        out = run_head(head, x)
        alive_after_forward = live.origins()
    # the fp32 cast and the LayerNorm's output are gone once the forward is (LayerNorm keeps its row statistics)
    assert "aten._to_copy.default" not in alive_after_forward
    assert alive_after_forward.count("aten.native_layer_norm.default") <= 2
    assert all(size < x.numel() * 4 for size in live.sizes("aten.native_layer_norm.default"))
    out.square().sum().backward()
    grads = [p.grad.clone() for p in head.parameters()]
    head.zero_grad()
    reference = head(x.float())
    reference.square().sum().backward()
    assert torch.equal(out, reference)  # the same numbers: the backward recasts the batch (exact)
    for got, p in zip(grads, head.parameters()):
        assert torch.equal(got, p.grad)


def step_grads(micro_batch, chunk_size):
    torch.manual_seed(0)
    images, texts = torch.randn(48, 12).half(), torch.randn(48, 10).half()
    config = TrainConfig(out_dim=16, image_head="linear", text_head="star", width=2, batch_size=48,
                         micro_batch=micro_batch, chunk_size=chunk_size, optimizer="adamw", lr=1e-3, device="cpu")
    model = AlignmentModel(12, 10, 16, "linear", "star", 2)
    loss, _ = train_step(model, make_optimizer(model, config), images, texts, torch.arange(48), 48, config)
    return loss, {name: p.grad.clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("micro_batch", [None, 10])
def test_step_gradients_equal_the_naive_one_pass_step(micro_batch):
    # The engine's step before this change: one pass, F.normalize, the full logit matrix (chunk_size=None).
    ref_loss, ref = step_grads(None, None)
    loss, got = step_grads(micro_batch, 16)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)
