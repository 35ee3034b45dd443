import math

import pytest
import torch
from torch import nn

from alignprobe.errors import ValidationError
from alignprobe.probe.training.heads import LOGIT_SCALE_MAX, AlignmentHead, AlignmentModel, StarBlock

# LayerNorm of x = [1, 3]: mean 2, variance 1 -> [-1, 1] / sqrt(1 + eps).
X = torch.tensor([[1.0, 3.0]])
S = 1.0 / math.sqrt(1.0 + 1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp", "star"])
def test_output_shapes(kind):
    head = AlignmentHead(6, 4, kind=kind, width=2)
    assert head(torch.randn(5, 6)).shape == (5, 4)
    assert head(torch.randn(3, 5, 6)).shape == (3, 5, 4)


def test_identity_head_is_parameter_free_passthrough():
    head = AlignmentHead(5, 5, kind="identity")
    x = torch.randn(3, 5)
    assert list(head.parameters()) == []
    assert torch.equal(head(x), x)
    with pytest.raises(ValidationError, match="out_dim must equal"):
        AlignmentHead(5, 4, kind="identity")


def test_bad_arguments():
    with pytest.raises(ValidationError, match="kind"):
        AlignmentHead(4, 4, kind="conv")
    with pytest.raises(ValidationError, match="in_dim"):
        AlignmentHead(0, 4)
    with pytest.raises(ValidationError, match="features of size"):
        AlignmentHead(4, 2)(torch.randn(2, 3))


def _xavier_bound(fan_in, fan_out):
    return math.sqrt(6.0 / (fan_in + fan_out))


@pytest.mark.parametrize("kind", ["linear", "mlp", "star"])
def test_init_xavier_uniform_zero_bias(kind):
    torch.manual_seed(0)
    head = AlignmentHead(64, 32, kind=kind, width=2)
    assert torch.equal(head.norm.weight, torch.ones(64)) and torch.equal(head.norm.bias, torch.zeros(64))
    if kind == "star":
        hidden = 128
        w1, w2 = head.net.fc_in.weight.split(hidden)
        # each branch is its own Linear(d, w*d) in the paper: bound from (64, 128), not (64, 256)
        matrices = [(w1, 64, hidden), (w2, 64, hidden), (head.net.fc_out.weight, hidden, 32)]
        biases = [head.net.fc_in.bias, head.net.fc_out.bias]
    else:
        linears = [m for m in head.net.modules() if isinstance(m, nn.Linear)]
        matrices = [(m.weight, m.in_features, m.out_features) for m in linears]
        biases = [m.bias for m in linears]
    for weight, fan_in, fan_out in matrices:
        bound = _xavier_bound(fan_in, fan_out)
        assert weight.abs().max() <= bound
        assert weight.abs().max() > 0.95 * bound  # uniform over the full range, not a narrower init
    for bias in biases:
        assert torch.equal(bias, torch.zeros_like(bias))


def test_star_head_matches_hand_computation():
    head = AlignmentHead(2, 1, kind="star", width=1)
    w1 = torch.tensor([[2.0, 0.0], [0.0, 10.0]])
    b1 = torch.tensor([0.0, 1.0])
    w2 = torch.tensor([[1.0, 1.0], [3.0, -1.0]])
    b2 = torch.tensor([0.5, 0.0])
    with torch.no_grad():
        head.net.fc_in.weight.copy_(torch.cat([w1, w2]))
        head.net.fc_in.bias.copy_(torch.cat([b1, b2]))
        head.net.fc_out.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.net.fc_out.bias.fill_(1.0)
    # n = [-s, s]; x1 = [-2s, 10s + 1] -> ReLU6 -> [0, 6]; x2 = [0.5, -4s];
    # product [0, -24s]; output 1 * 0 + 2 * (-24s) + 1
    expected = -48.0 * S + 1.0
    assert head(X).item() == pytest.approx(expected, rel=1e-6)


def test_star_block_is_two_branch_block():
    torch.manual_seed(0)
    block = StarBlock(3, 2, width=2)
    x = torch.randn(4, 3)
    w1, w2 = block.fc_in.weight.split(6)
    b1, b2 = block.fc_in.bias.split(6)
    expected = block.fc_out(torch.clamp(x @ w1.T + b1, 0, 6) * (x @ w2.T + b2))
    torch.testing.assert_close(block(x), expected)


def test_mlp_head_matches_hand_computation():
    head = AlignmentHead(2, 1, kind="mlp")
    with torch.no_grad():
        hidden = torch.zeros(8, 2)
        hidden[0, 0], hidden[1, 1] = 1.0, 1.0
        head.net[0].weight.copy_(hidden)
        head.net[0].bias.zero_()
        out = torch.zeros(1, 8)
        out[0, 0], out[0, 1] = 1.0, 2.0
        head.net[2].weight.copy_(out)
        head.net[2].bias.fill_(0.5)

    def gelu(v):
        return 0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0)))

    # hidden = [-s, s, 0, ...]; output gelu(-s) + 2 gelu(s) + 0.5
    expected = gelu(-S) + 2.0 * gelu(S) + 0.5
    assert head(X).item() == pytest.approx(expected, rel=1e-6)


def test_linear_head_matches_hand_computation():
    head = AlignmentHead(2, 2, kind="linear")
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
        head.net.bias.copy_(torch.tensor([0.0, 3.0]))
    torch.testing.assert_close(head(X), torch.tensor([[S, 3.0 - S]]))


def test_alignment_model_init_encode_and_config():
    torch.manual_seed(0)
    model = AlignmentModel(6, 4, out_dim=8, image_head="star", text_head="mlp", width=2)
    assert model.logit_scale.item() == pytest.approx(math.log(20.0))
    assert model.logit_bias.item() == pytest.approx(-10.0)
    zi, zt = model.encode_image(torch.randn(3, 6)), model.encode_text(torch.randn(5, 4))
    torch.testing.assert_close(zi.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(zt.norm(dim=-1), torch.ones(5))
    assert model.logits(zi, zt).shape == (5, 3)
    raw_i, raw_t = model(torch.randn(3, 6), torch.randn(5, 4))
    assert raw_i.shape == (3, 8) and raw_t.shape == (5, 8)

    clone = AlignmentModel.from_config(model.config())
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 6)
    torch.testing.assert_close(clone.encode_image(x), model.encode_image(x))
    assert clone.config() == model.config()


def test_logit_scale_clamp():
    model = AlignmentModel(4, 4, out_dim=4)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    model.clamp_()
    assert model.logit_scale.item() == pytest.approx(LOGIT_SCALE_MAX)
    assert model.logit_scale.exp().item() == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(-1.0)
    model.clamp_()
    assert model.logit_scale.item() == 0.0
    with torch.no_grad():
        model.logit_scale.fill_(2.0)
    model.clamp_()
    assert model.logit_scale.item() == 2.0
