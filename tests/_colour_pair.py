"""A real encoder pair whose shared-space similarities are known in closed form.

Vision: the `pixels-8` control (ImageNet-normalised 8x8 pixels); its projection undoes the
normalisation and averages each channel, so a solid-colour image lands on its RGB colour.
Text: the `bow` control (hashed word counts); its projection sends the words red / green /
blue to the R / G / B axes and every other word to zero. So the cosine of a caption and an
image is the cosine of the caption's colour-word counts and the image's RGB, written out by
hand in the tests.
"""
import numpy as np
import torch

from alignprobe.backbones import create_text_encoder, create_vision_encoder
from alignprobe.backbones.controls import stable_bucket

COLOUR_WORDS = {"red": 0, "green": 1, "blue": 2}
MEAN = torch.tensor((0.485, 0.456, 0.406))
STD = torch.tensor((0.229, 0.224, 0.225))


def colour_pair():
    vision = create_vision_encoder("pixels-8")
    text = create_text_encoder("bow")
    n = text.dim
    buckets = {w: stable_bucket(w, n) for w in COLOUR_WORDS}
    assert len(set(buckets.values())) == 3
    words = torch.zeros(n, 3)
    for w, axis in COLOUR_WORDS.items():
        words[buckets[w], axis] = 1.0

    def image_to_space(x):
        rgb = x.reshape(len(x), 3, -1).mean(-1) * STD + MEAN
        return torch.nn.functional.normalize(rgb, dim=-1)

    def text_to_space(x):
        return torch.nn.functional.normalize(x @ words, dim=-1)

    return vision, text, image_to_space, text_to_space


def word_vector(sentence):
    v = np.zeros(3)
    for tok in sentence.lower().replace(".", " ").split():
        if tok in COLOUR_WORDS:
            v[COLOUR_WORDS[tok]] += 1
    return v


def cosine(a, b):
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(a @ b / (na * nb))


class Aligned:
    """What `load_aligned` returns, reduced to the members the evaluations use."""

    def __init__(self, vision, text, image_to_space, text_to_space, logit_scale=10.0):
        self._enc = {"vision": vision, "text": text}
        self.transform_image, self.transform_text = image_to_space, text_to_space
        self.model = torch.nn.Module()
        self.model.logit_scale = torch.nn.Parameter(torch.tensor(float(np.log(logit_scale))))

    def encoder(self, modality):
        return self._enc[modality]
