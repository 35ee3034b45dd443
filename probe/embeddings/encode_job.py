"""`alignprobe encode`: one encoder over one data set, through the cache.

A vision encoder encodes the images; a text encoder encodes the captions
(every caption, extra positives included) and, for a labelled set, the class
prompts (class names x templates) that zero-shot classification needs.
"""
from __future__ import annotations

import logging

from alignprobe.backbones import check_available, create_text_encoder, create_vision_encoder, resolve_spec
from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, UnknownEncoderError
from alignprobe.probe.data.spec import class_prompts, flatten_captions, open_dataset
from alignprobe.probe.embeddings.cache import open_cache
from alignprobe.probe.embeddings.encoding import EncodeResult, ImageSource, TextSource, encode_source, parse_shard

log = logging.getLogger("alignprobe.encode")


def resolve_model(name: str, modality: str | None = None):
    """The registry spec for `name`; with no modality, vision is tried first, then text."""
    if modality is not None:
        return resolve_spec(name, modality)
    errors = []
    for candidate in ("vision", "text"):
        try:
            return resolve_spec(name, candidate)
        except UnknownEncoderError as err:
            errors.append(str(err))
    raise UnknownEncoderError(" / ".join(errors))


def create_encoder(spec_or_name, modality: str | None = None, options: EncodeOptions | None = None):
    """Build the encoder for a spec (or name), failing fast if its weights are not available."""
    options = options or EncodeOptions()
    spec = resolve_model(spec_or_name, modality) if isinstance(spec_or_name, str) else spec_or_name
    check_available(spec)
    factory = create_vision_encoder if spec.modality == "vision" else create_text_encoder
    opt_in = {"trust_remote_code": True} if options.trust_remote_code else {}  # False would unset a pinned entry's
    return factory(spec, device=options.device, dtype=options.dtype, **opt_in)


def text_sources(dataset) -> list[TextSource]:
    """The texts a text encoder needs from `dataset`: its captions and its class prompts."""
    sources = []
    if dataset.has_captions:
        captions, _ = flatten_captions(dataset)
        sources.append(TextSource(dataset.name, captions, kind="captions"))
    if dataset.class_names:
        prompts, _ = class_prompts(dataset)
        sources.append(TextSource(dataset.name, prompts, kind="prompts"))
    if not sources:
        raise DataError(f"{dataset.name!r} has neither captions nor class names: nothing for a text encoder")
    return sources


def encode_with(encoder, dataset, options: EncodeOptions) -> dict[str, EncodeResult]:
    """Encode what `encoder`'s modality needs from `dataset`; results by source kind."""
    sources = [ImageSource(dataset)] if encoder.modality == "vision" else text_sources(dataset)
    results = {}
    for source in sources:
        results[source.kind] = encode_source(
            encoder,
            source,
            cache=open_cache(options),
            batch_size=options.batch_size,
            num_workers=options.num_workers,
            storage_dtype=options.storage_dtype,
            recompute=options.recompute,
            shard=parse_shard(options.shard),
            strict=options.strict,
            shard_rows=options.shard_rows,
            quiet=options.quiet,
        )
    return results


def encode_dataset(model: str, data: str, *, modality: str | None = None, split: str | None = None,
                   options: EncodeOptions | None = None) -> dict[str, EncodeResult]:
    """Public API behind `alignprobe encode`: resolve, check, open, encode (cached)."""
    options = options or EncodeOptions()
    spec = resolve_model(model, modality)
    encoder = create_encoder(spec, options=options)
    dataset = open_dataset(data, split=split, strict=options.strict)
    return encode_with(encoder, dataset, options)
