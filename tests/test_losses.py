import math

import pytest
import torch
import torch.nn.functional as F

from alignprobe.errors import ValidationError
from alignprobe.probe.training.losses import (
    infonce_loss,
    pairwise_infonce_loss,
    pairwise_sigmoid_loss,
    sigmoid_loss,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def reference_sigmoid(images, text_blocks, scale, bias, normalization="n2"):
    """The SAIL definition: concatenate the N x N blocks, labels +1 on each diagonal."""
    n = images.shape[0]
    img = F.normalize(images, dim=-1)
    labels = 2 * torch.eye(n, dtype=images.dtype) - 1
    logits = torch.cat([scale * F.normalize(t, dim=-1) @ img.T + bias for t in text_blocks])
    terms = -F.logsigmoid(labels.repeat(len(text_blocks), 1) * logits)
    return terms.mean() if normalization == "n2" else terms.sum() / n


def test_two_by_two_hand_computed():
    images = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # row 2 normalises to [1, 1] / sqrt 2
    # logits (text rows x image columns) = 2 * sim - 1 = [[1, -1], [r - 1, r - 1]], r = sqrt 2
    r = math.sqrt(2.0)
    terms = [softplus(-1.0), softplus(-1.0), softplus(r - 1.0), softplus(-(r - 1.0))]
    #        pos (1)          neg (-1)        neg (r-1)           pos (r-1)
    loss = sigmoid_loss(images, texts, 2.0, -1.0)
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-6)
    loss_n = sigmoid_loss(images, texts, 2.0, -1.0, normalization="n")
    assert loss_n.item() == pytest.approx(sum(terms) / 2, rel=1e-6)
    for chunk in (1, 2, 5):
        assert sigmoid_loss(images, texts, 2.0, -1.0, chunk_size=chunk).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_features_are_normalised_inside():
    torch.manual_seed(0)
    i, t = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(sigmoid_loss(i, t, 10.0, -3.0), sigmoid_loss(4 * i, 0.1 * t, 10.0, -3.0))


@pytest.mark.parametrize("normalization", ["n2", "n"])
def test_multi_positive_equals_concatenated_blocks(normalization):
    torch.manual_seed(0)
    n, d = 6, 4
    i, t = torch.randn(n, d), torch.randn(n, d)
    extra = torch.randn(2, n, d)
    expected = reference_sigmoid(i, [t, extra[0], extra[1]], 7.0, -2.0, normalization)
    for form in (extra, list(extra.unbind(0))):
        got = sigmoid_loss(i, t, 7.0, -2.0, form, normalization=normalization)
        torch.testing.assert_close(got, expected)
    one = sigmoid_loss(i, t, 7.0, -2.0, extra[0], normalization=normalization)
    torch.testing.assert_close(one, reference_sigmoid(i, [t, extra[0]], 7.0, -2.0, normalization))


def test_n_versus_n2():
    torch.manual_seed(0)
    n = 9
    i, t, e = torch.randn(n, 4), torch.randn(n, 4), torch.randn(n, 4)
    n2 = sigmoid_loss(i, t, 5.0, -1.0, e, normalization="n2")
    n1 = sigmoid_loss(i, t, 5.0, -1.0, e, normalization="n")
    # 2 blocks of n x n logits: n2 divides the sum by 2 n^2, n by n
    torch.testing.assert_close(n1, n2 * 2 * n)


def _leaves(seed, n, d, k, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    make = lambda *shape: torch.randn(*shape, generator=g).to(dtype).requires_grad_()  # noqa: E731
    return {
        "img": make(n, d), "txt": make(n, d), "extra": make(k, n, d), "neg": make(5, d),
        "t": torch.tensor(math.log(20.0), dtype=dtype, requires_grad=True),
        "b": torch.tensor(-4.0, dtype=dtype, requires_grad=True),
    }


def _sigmoid_with_grads(chunk, normalization="n2", dtype=torch.float32):
    p = _leaves(0, 37, 8, 2, dtype)
    loss = sigmoid_loss(p["img"], p["txt"], p["t"].exp(), p["b"], p["extra"], normalization, chunk,
                        negative_text_features=p["neg"])
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in p.items()}


@pytest.mark.parametrize("chunk", [3, 16, 36, 37, 100])
def test_chunked_sigmoid_equals_naive(chunk):
    naive_loss, naive_grads = _sigmoid_with_grads(None)
    loss, grads = _sigmoid_with_grads(chunk)
    assert (loss - naive_loss).abs().item() < 1e-5
    for name, grad in grads.items():
        assert (grad - naive_grads[name]).abs().max().item() < 1e-5, name


def test_chunked_sigmoid_sum_normalisation_matches_fp64():
    # "n" sums N * (K+1) N terms, so compare both fp32 paths with an fp64 reference.
    ref_loss, ref_grads = _sigmoid_with_grads(None, "n", torch.float64)
    for chunk in (None, 7):
        loss, grads = _sigmoid_with_grads(chunk, "n")
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
        for name, grad in grads.items():
            torch.testing.assert_close(grad.double(), ref_grads[name], rtol=1e-5, atol=1e-6)


def test_chunked_sigmoid_without_grad_and_half_inputs():
    torch.manual_seed(0)
    i, t = torch.randn(20, 6), torch.randn(20, 6)
    with torch.no_grad():
        naive = sigmoid_loss(i, t, 10.0, -5.0)
        tiled = sigmoid_loss(i, t, 10.0, -5.0, chunk_size=6)
    assert not tiled.requires_grad
    assert abs(naive.item() - tiled.item()) < 1e-6
    half = sigmoid_loss(i.half(), t.half(), 10.0, -5.0, chunk_size=6)
    assert half.dtype == torch.float32 and abs(half.item() - naive.item()) < 1e-3


@pytest.mark.parametrize("dtype, rel", [(torch.float32, 1e-6), (torch.float64, 1e-14)])
def test_softplus_sum_matches_the_exact_sum_across_the_range(dtype, rel):
    """The loss's softplus sum (log1p rewritten through log on a CPU, where torch's log1p is scalar
    code) against fp64 softplus: term by term -- across the ranges where 1 + exp(-|z|) rounds to 1,
    where exp underflows, and the logits the probe sees -- and summed over a tile."""
    from alignprobe.probe.training.losses import _softplus_sum

    def exact_terms(z):  # fp64, without F.softplus's threshold (it returns z itself above z = 20)
        z = z.double()
        return z.clamp_min(0) + torch.log1p(torch.exp(-z.abs()))

    points = torch.cat([torch.linspace(-120, 120, 2401), torch.tensor([-104.0, -88.7, -17.0, -16.6, -1e-8, 0.0, 1e-8])])
    exact = exact_terms(points.to(dtype))
    for z, want in zip(points.to(dtype), exact):
        got = _softplus_sum(z.reshape(1, 1)).item()
        tiny = torch.finfo(dtype).tiny  # below it, a subnormal result: only an absolute bound holds
        assert abs(got - want.item()) <= rel * want.item() + tiny, float(z)
    torch.manual_seed(0)
    for spread, shift in ((1.0, 0.0), (5.0, -10.0), (30.0, -10.0)):
        tile = (torch.randn(96, 80, dtype=torch.float64) * spread + shift).to(dtype)
        want = exact_terms(tile).sum().item()
        assert _softplus_sum(tile).item() == pytest.approx(want, rel=rel)
    wide = (torch.randn(5, (1 << 19) + 3, dtype=torch.float64) * 5 - 10).to(dtype)  # summed in 5 row blocks
    assert _softplus_sum(wide).item() == pytest.approx(exact_terms(wide).sum().item(), rel=rel)
    special = _softplus_sum(torch.tensor([[float("inf")]], dtype=dtype)), _softplus_sum(torch.tensor([[float("-inf")]], dtype=dtype))
    assert special[0].item() == float("inf") and special[1].item() == 0.0
    assert math.isnan(_softplus_sum(torch.tensor([[float("nan"), 1.0]], dtype=dtype)).item())


def _pairwise_with_grads(chunk, matmul_dtype, img, txt, positive, scale=20.0, bias=-10.0):
    img, txt = img.clone().requires_grad_(True), txt.clone().requires_grad_(True)
    s, b = torch.tensor(scale, requires_grad=True), torch.tensor(bias, requires_grad=True)
    loss = pairwise_sigmoid_loss(img, txt, positive, s, b, chunk_size=chunk, matmul_dtype=matmul_dtype)
    loss.backward()
    return loss.detach(), (img.grad, txt.grad, s.grad, b.grad)


@pytest.mark.parametrize("matmul_dtype", [torch.bfloat16, torch.float16])
def test_half_precision_products_tiled_equal_naive_and_stay_near_fp32(matmul_dtype):
    """The reference computes its logits under autocast: the three products of each tile in half
    precision. Tiled and naive agree (both round the same products; only fp32 sums differ), the
    result is fp32, and it stays within half-precision rounding of the all-fp32 loss -- but is
    not it (the products really ran in half precision)."""
    torch.manual_seed(0)
    img, txt = torch.randn(40, 64), torch.randn(70, 64)
    positive = torch.cat([torch.arange(40), torch.randint(0, 40, (25,)), torch.full((5,), -1)])
    exact, exact_grads = _pairwise_with_grads(None, None, img, txt, positive)
    naive, naive_grads = _pairwise_with_grads(None, matmul_dtype, img, txt, positive)
    for chunk in (16, 100):
        tiled, tiled_grads = _pairwise_with_grads(chunk, matmul_dtype, img, txt, positive)
        assert tiled.dtype == torch.float32
        assert tiled.item() == pytest.approx(naive.item(), rel=1e-5)
        for got, want in zip(tiled_grads[:2], naive_grads[:2]):
            torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-5)
        # the scale's and bias's gradients are those of the loss as computed, rounded products
        # included (the scale's from the tile's own products: it was 2e-2 off from the features')
        for got, want in zip(tiled_grads[2:], naive_grads[2:]):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert naive.item() == pytest.approx(exact.item(), rel=2e-2)
    assert naive.item() != exact.item()
    for got, want in zip(naive_grads, exact_grads):
        torch.testing.assert_close(got, want, rtol=5e-2, atol=1e-4)


def test_half_precision_products_are_optional_and_checked():
    torch.manual_seed(0)
    i, t = torch.randn(6, 8), torch.randn(6, 8)
    index = torch.arange(6)
    fp32 = pairwise_sigmoid_loss(i, t, index, 10.0, -5.0, chunk_size=4)
    assert pairwise_sigmoid_loss(i, t, index, 10.0, -5.0, chunk_size=4, matmul_dtype=None).item() == fp32.item()
    with pytest.raises(ValidationError, match="matmul_dtype"):
        pairwise_sigmoid_loss(i, t, index, 10.0, -5.0, matmul_dtype=torch.float64)
    with pytest.raises(ValidationError, match="matmul_dtype"):
        pairwise_sigmoid_loss(i, t, index, 10.0, -5.0, matmul_dtype="bf16")


def test_pairwise_sigmoid_several_captions_per_image():
    torch.manual_seed(0)
    img, txt = torch.randn(4, 5), torch.randn(7, 5)
    positive = torch.tensor([0, 0, 1, 2, 3, 3, -1])  # two captions for images 0 and 3, one pure negative
    labels = -torch.ones(7, 4)
    labels[torch.arange(6), positive[:6]] = 1
    logits = 3.0 * F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T - 1.0
    expected = -F.logsigmoid(labels * logits).mean()
    for chunk in (None, 2, 3):
        torch.testing.assert_close(pairwise_sigmoid_loss(img, txt, positive, 3.0, -1.0, chunk_size=chunk), expected)


def _clip_reference(img, txt, scale):
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    labels = torch.arange(img.shape[0])
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_infonce_matches_cross_entropy_reference():
    torch.manual_seed(0)
    img, txt, extra = torch.randn(10, 6), torch.randn(10, 6), torch.randn(2, 10, 6)
    torch.testing.assert_close(infonce_loss(img, txt, 14.0), _clip_reference(img, txt, 14.0))
    # the bias cancels in the softmax
    torch.testing.assert_close(infonce_loss(img, txt, 14.0, -10.0), _clip_reference(img, txt, 14.0))
    expected = torch.stack([_clip_reference(img, t, 14.0) for t in (txt, extra[0], extra[1])]).mean()
    torch.testing.assert_close(infonce_loss(img, txt, 14.0, None, extra), expected)


@pytest.mark.parametrize("chunk", [4, 13, 64])
def test_chunked_infonce_equals_naive(chunk):
    def run(chunk_size):
        p = _leaves(1, 29, 8, 2)
        loss = infonce_loss(p["img"], p["txt"], p["t"].exp(), None, p["extra"], chunk_size,
                            negative_text_features=p["neg"])
        loss.backward()
        return loss.detach(), {k: v.grad for k, v in p.items() if k != "b"}

    naive_loss, naive_grads = run(None)
    loss, grads = run(chunk)
    assert (loss - naive_loss).abs().item() < 1e-5
    for name, grad in grads.items():
        assert (grad - naive_grads[name]).abs().max().item() < 1e-5, name


def test_pairwise_infonce_several_captions_per_image():
    torch.manual_seed(0)
    img, txt = torch.randn(3, 4), torch.randn(5, 4)
    positive = torch.tensor([0, 0, 1, 2, -1])
    logits = 5.0 * F.normalize(txt, dim=-1) @ F.normalize(img, dim=-1).T
    pairs = torch.arange(4)
    t2i = F.cross_entropy(logits[pairs], positive[pairs])
    i2t = F.cross_entropy(logits.T[positive[pairs]], pairs)
    expected = (t2i + i2t) / 2
    for chunk in (None, 2):
        torch.testing.assert_close(pairwise_infonce_loss(img, txt, positive, 5.0, chunk), expected)


def test_validation_errors():
    i, t = torch.randn(4, 3), torch.randn(4, 3)
    with pytest.raises(ValidationError, match="rows"):
        sigmoid_loss(i, torch.randn(5, 3), 1.0, 0.0)
    with pytest.raises(ValidationError, match="feature size"):
        sigmoid_loss(i, torch.randn(4, 2), 1.0, 0.0)
    with pytest.raises(ValidationError, match="normalization"):
        sigmoid_loss(i, t, 1.0, 0.0, normalization="mean")
    with pytest.raises(ValidationError, match="chunk_size"):
        sigmoid_loss(i, t, 1.0, 0.0, chunk_size=0)
    with pytest.raises(ValidationError, match="extra_text_features"):
        sigmoid_loss(i, t, 1.0, 0.0, torch.randn(3, 3))
    with pytest.raises(ValidationError, match="scalar"):
        sigmoid_loss(i, t, torch.ones(2), 0.0)
    with pytest.raises(ValidationError, match="positive_index"):
        pairwise_sigmoid_loss(i, t, torch.tensor([0, 1, 2, 4]), 1.0, 0.0)
    with pytest.raises(ValidationError, match="positive pair"):
        pairwise_infonce_loss(i, t, torch.full((4,), -1), 1.0)
