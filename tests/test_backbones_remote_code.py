"""Remote-code text models with a model-native `encode` (NV-Embed-v2's interface).

Tested on a tiny local stand-in.
"""

import json

import pytest
import torch
from alignprobe.backbones import create_text_encoder

from alignprobe.errors import ValidationError

VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
] + "instruct query a photo of cat dog red car : the".split()

# NV-Embed-v2's encode(prompts, instruction, max_length): it tokenizes instruction + text itself
# and keeps the instruction tokens out of the pooling.
MODELING = """
import torch
from transformers import AutoTokenizer, BertConfig, BertModel, PreTrainedModel


class TinyEmbedConfig(BertConfig):
    model_type = "tiny_embed"


class TinyEmbedModel(PreTrainedModel):
    config_class = TinyEmbedConfig

    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask)

    def encode(self, prompts, instruction="", max_length=512):
        tok = AutoTokenizer.from_pretrained(self.name_or_path)
        batch = tok([instruction + p for p in prompts], padding=True, truncation=True,
                    max_length=max_length,
                    return_tensors="pt")
        n_instr = len(tok(instruction, add_special_tokens=False)["input_ids"])
        mask = batch["attention_mask"].clone()
        mask[:, 1:1 + n_instr] = 0
        hidden = self.bert(**batch).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1)
"""


@pytest.fixture(scope="module")
def remote_dir(tmp_path_factory):
    import importlib.util

    from transformers import BertTokenizer

    d = tmp_path_factory.mktemp("remote")
    (d / "modeling_tiny_embed.py").write_text(MODELING)
    spec = importlib.util.spec_from_file_location(
        "modeling_tiny_embed", d / "modeling_tiny_embed.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    cfg = mod.TinyEmbedConfig(
        vocab_size=len(VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    mod.TinyEmbedModel(cfg).save_pretrained(d)
    BertTokenizer(vocab={w: i for i, w in enumerate(VOCAB)}).save_pretrained(d)
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {
        "AutoConfig": "modeling_tiny_embed.TinyEmbedConfig",
        "AutoModel": "modeling_tiny_embed.TinyEmbedModel",
    }
    (d / "config.json").write_text(json.dumps(config))
    return d, mod


def test_model_native_encode_gets_the_instruction(remote_dir):
    d, mod = remote_dir
    prefix = "instruct : query : "
    enc = create_text_encoder(d, pooling="encode", trust_remote_code=True, prefix=prefix)
    texts = ["a photo of a cat", "red car"]
    # the strings reach the model untouched; the instruction is passed natively
    assert enc.preprocess("red car") == "red car"
    z = enc.encode(texts)
    ref_model = mod.TinyEmbedModel.from_pretrained(d).eval()
    with torch.inference_mode():
        ref = ref_model.encode(texts, instruction=prefix)
    assert z.shape == (2, 32) and torch.allclose(z, ref, atol=1e-5)
    with torch.inference_mode():
        assert not torch.allclose(z, ref_model.encode(texts, instruction=""), atol=1e-4)
    m = enc.manifest()
    assert m["trust_remote_code"] is True and m["prefix"] == prefix and m["pooling"] == "encode"


def test_remote_code_runs_only_when_asked(remote_dir):
    d, _ = remote_dir
    with pytest.raises(ValidationError, match="trust_remote_code=True"):
        create_text_encoder(d, pooling="encode")


def test_registered_remote_code_entries_are_pinned_and_other_revisions_need_opt_in():
    from alignprobe.backbones import list_encoders, resolve_spec
    from alignprobe.backbones.factory import check_remote_code

    remote = [s for s in list_encoders() if s.trust_remote_code]
    assert remote and all(s.revision and len(s.revision) == 40 for s in remote)  # a full commit each
    for spec in remote:
        check_remote_code(spec)  # the pinned commit needs no opt-in
    other = resolve_spec("hf:Alibaba-NLP/gte-large-en-v1.5@refs/pr/99", "text")
    with pytest.raises(ValidationError, match="refs/pr/99.*pass trust_remote_code=True"):
        check_remote_code(other)
    check_remote_code(other, opted_in=True)
    # through the factory: the revision override alone is refused before anything loads
    with pytest.raises(ValidationError, match="instead of the pinned"):
        create_text_encoder("nv-embed-v2", revision="main", device="cpu")


def test_a_run_directory_never_enables_remote_code_by_itself(remote_dir):
    """aligned.json records the user's opt-in, but reloading it needs the opt-in again."""
    from alignprobe import EncoderRequest
    from alignprobe.probe.pipelines.aligned import AlignedModel
    from alignprobe.probe.training.heads import AlignmentModel

    request = EncoderRequest.create("text", str(remote_dir[0]), pooling="encode", trust_remote_code=True)
    info = {"text": {"request": request.to_dict()}, "vision": {"request": EncoderRequest.create(
        "vision", "pixels-8").to_dict()}}
    model = AlignmentModel(8, 4, out_dim=4)
    shared = AlignedModel(model, info, device="cpu")
    assert "trust_remote_code" not in shared.request("text").option_dict()
    with pytest.raises(ValidationError, match="trust_remote_code=True"):
        shared.encoder("text").encode(["a photo"])
    trusted = AlignedModel(model, info, device="cpu", trust_remote_code=True)
    assert trusted.request("text").option_dict()["trust_remote_code"] is True
