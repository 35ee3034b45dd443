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
