"""Encode throughput: backends for images, batching for captions, end to end, cache open.

Prints, measured in one run:
  1. images/s of `encode_source` (decode + preprocess in DataLoader workers, forward,
     cache write) divided by images/s of the model's forward alone on the same
     preprocessed batches (goal: >= 0.9 on the CPU with a small ViT);
  2. the time and RSS growth of opening a 1M x 1024 fp16 cache and reading rows
     from it (goal: opening reads headers only);
  3. (issue 20, `--backends`) EfficientNet-Lite0 img/s on the same preprocessed batches:
     alignprobe's encoder (onnxruntime where exact) against torch eager (NCHW), torch
     channels_last (alignprobe with ALIGNPROBE_ONNX=0) and torch frozen TorchScript
     (conv-BN folded), interleaved rounds; the ratio to the fastest (goal >= 0.7);
  4. (issue 20, `--captions`) MiniLM captions/s: alignprobe's `encode_source` (length-sorted
     batches, cache write included) against `SentenceTransformer.encode` on the same model
     and captions at batches 32-256; the ratio to ST's best batch (goal >= 0.8);
  5. (`--dedup`) MiniLM on `shapes:train`'s templated captions: each distinct caption encoded
     once (the default) against every row encoded (before), seconds and the ratio;
  6. (`--vit`) random-vit (ViT-S/16, 224 px): alignprobe's encoder against torch eager (SDPA) at
     several batches and onnxruntime variants, each as a fraction of the GEMM peak measured in
     the same run; the ratio to the fastest exact backend (goal >= 0.7).

Usage: python benchmarks/encode_throughput.py [--quick] [--images N] [--batch-size B]
       python benchmarks/encode_throughput.py --backends --captions --skip-e2e --skip-cache
       python benchmarks/encode_throughput.py --dedup --vit --skip-e2e --skip-cache
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# first thing, before torch: the tool's own allocator settings (alignprobe's CLI does the same)
from alignprobe._allocator import keep_freed_memory

keep_freed_memory()

import numpy as np  # noqa: E402
import torch  # noqa: E402


def rss_mib(kind: str = "VmRSS") -> float:
    """Resident memory in MiB: VmRSS (all), RssAnon (private heap), RssFile (mapped page cache)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(kind + ":")) / 1024


def forward_only(encoder, dataset, n: int, batch_size: int) -> float:
    """images/s of encoder.forward on batches preprocessed beforehand (held in RAM)."""
    pre = encoder.preprocessor
    batches = []
    for start in range(0, n, batch_size):
        items = [pre.preprocess(dataset.load_image(i)) for i in range(start, min(start + batch_size, n))]
        batches.append(pre.collate(items))
    encoder.forward(batches[0])  # warm-up
    t0 = time.perf_counter()
    for batch in batches:
        encoder.forward(batch)
    return n / (time.perf_counter() - t0)


def end_to_end(encoder, dataset, n: int, batch_size: int, workers: int | None) -> float:
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import ImageSource, encode_source

    class FirstN:
        def __init__(self, ds, n):
            self.ds, self.n, self.name = ds, n, f"{ds.name}[:{n}]"
            self.ids = ds.ids[:n]

        def __len__(self):
            return self.n

        def load_image(self, i):
            return self.ds.load_image(i)

        def fingerprint(self):
            return f"{self.ds.fingerprint()}:{self.n}"

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        encode_source(encoder, ImageSource(FirstN(dataset, n)), cache=EmbeddingCache(Path(tmp)),
                      batch_size=batch_size, num_workers=workers, quiet=True)
        return n / (time.perf_counter() - t0)


def cache_open(rows: int, dim: int, shard_rows: int) -> dict:
    from alignprobe.probe.embeddings.cache import CacheIdentity, EmbeddingCache

    with tempfile.TemporaryDirectory() as tmp:
        cache = EmbeddingCache(Path(tmp))
        ident = CacheIdentity("text", {"name": "bench"},
                              {"kind": "captions", "name": "bench", "n": rows, "fingerprint": "x"},
                              "fp16", shard_rows=shard_rows)
        cache.begin(ident)
        rng = np.random.default_rng(0)
        block = rng.standard_normal((shard_rows, dim), dtype=np.float32)
        for j in range(ident.n_shards):
            start, end = ident.shard_range(j)
            cache.write_shard(ident, j, block[: end - start], np.ones(end - start, bool), {})
        del block
        cache.finalize(ident)
        before, before_anon = rss_mib(), rss_mib("RssAnon")
        t0 = time.perf_counter()
        emb = cache.lookup(ident)
        open_s = time.perf_counter() - t0
        after_open = rss_mib()
        idx = rng.choice(rows, size=4096, replace=False)
        t0 = time.perf_counter()
        out = emb.rows(idx)
        gather_s = time.perf_counter() - t0
        return {"open_s": open_s, "open_rss_mib": after_open - before, "gather_4096_s": gather_s,
                "gather_rss_mib": rss_mib() - before, "gather_anon_mib": rss_mib("RssAnon") - before_anon,
                "out_mib": out.nbytes / 2**20, "file_gib": rows * dim * 2 / 2**30}


def preprocessed_batches(encoder, dataset, n: int, batch_size: int) -> list[torch.Tensor]:
    pre = encoder.preprocessor
    return [pre.collate([pre.preprocess(dataset.load_image(i)) for i in range(a, min(a + batch_size, n))])
            for a in range(0, n, batch_size)]


def torch_variants(model: torch.nn.Module, pool, example: torch.Tensor) -> dict:
    """{name: batch -> features} for the torch settings compared with alignprobe's encoder."""
    import copy

    nchw = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def eager(x):
        return pool(nchw.forward_features(x))

    def channels_last(x):
        return pool(last.forward_features(x.contiguous(memory_format=torch.channels_last)))

    class Features(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return pool(self.m.forward_features(x))

    with torch.no_grad():
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
            Features(copy.deepcopy(model)).eval(), example.contiguous(memory_format=torch.channels_last))))

    def jit_frozen(x):
        return frozen(x.contiguous(memory_format=torch.channels_last))

    return {"torch eager (NCHW)": eager, "torch channels_last": channels_last,
            "torch frozen jit (BN folded)": jit_frozen}


def spinning_session(path, spinning: bool = True):
    """The same graph with onnxruntime's default spin-waiting threads (alignprobe turns spinning
    off: on a shared 2-core machine it steals the image decoder's core)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"pixels": x.contiguous().numpy()})[0])


def timed_rounds(variants: dict, batches: list, rounds: int) -> dict[str, float]:
    """Best images/s of each variant over interleaved rounds (after one warm-up batch each)."""
    n = sum(len(b) for b in batches)
    best = dict.fromkeys(variants, 0.0)
    with torch.inference_mode():
        for fn in variants.values():
            fn(batches[0])
        for _ in range(rounds):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                for b in batches:
                    fn(b)
                best[name] = max(best[name], n / (time.perf_counter() - t0))
    return best


def backends(model_name: str, n: int, batch_size: int, rounds: int) -> None:
    """Section 3: alignprobe's image encoder against torch settings on the same batches."""
    import alignprobe
    from alignprobe.probe.data.spec import open_dataset

    t0 = time.perf_counter()
    encoder = alignprobe.create_vision_encoder(model_name, device="cpu")
    load_s = time.perf_counter() - t0
    print(f"\n[backends] {model_name}: alignprobe runs {encoder.execution} ({encoder.execution_note}; "
          f"load {load_s:.1f} s), {n} shapes images, batch {batch_size}, torch threads {torch.get_num_threads()}")
    batches = preprocessed_batches(encoder, open_dataset("shapes"), n, batch_size)
    from alignprobe.backbones.pooling import pool_vision

    def pool(feats):
        return pool_vision(feats, encoder.spec.pooling, num_prefix_tokens=0, has_cls=False)

    variants = {f"alignprobe ({encoder.execution})": encoder.forward,
                **torch_variants(encoder.model, pool, batches[0])}
    if encoder.execution == "onnxruntime":
        variants["onnxruntime, threads spinning"] = spinning_session(encoder._onnx.path)
    with torch.inference_mode():
        want = variants["torch eager (NCHW)"](batches[0]).numpy()
        errs = {k: float(np.abs(fn(batches[0]).numpy() - want).max() / np.abs(want).max())
                for k, fn in variants.items()}
    speed = timed_rounds(variants, batches, rounds)
    fastest = max(speed.values())
    for name, v in speed.items():
        print(f"  {name:32s} {v:8.1f} img/s   x{v / speed['torch eager (NCHW)']:.2f} eager   "
              f"{v / fastest:.2f} of fastest   rel. error vs eager {errs[name]:.1e}")
    ours = speed[f"alignprobe ({encoder.execution})"]
    print(f"  ratio alignprobe / fastest exact : {ours / fastest:.3f}   (goal >= 0.7)")


def captions(n: int, rounds: int) -> None:
    """Section 4: alignprobe's caption encoding against SentenceTransformer.encode's best batch."""
    import alignprobe
    from alignprobe.probe.data.spec import flatten_captions, open_dataset
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import TextSource, encode_source

    texts = (flatten_captions(open_dataset("shapes"))[0] * 2)[:n]
    encoder = alignprobe.create_text_encoder("minilm", device="cpu")
    st = encoder.model  # the SentenceTransformer alignprobe wraps: same weights, same threads
    print(f"\n[captions] minilm, {len(texts)} shapes captions, torch threads {torch.get_num_threads()}")

    def ours(text_batch, sort):
        # every row encoded (no de-duplication): the same work as SentenceTransformer.encode
        def run():
            with tempfile.TemporaryDirectory() as tmp:
                encode_source(encoder, TextSource("bench", texts), cache=EmbeddingCache(Path(tmp)),
                              batch_size=64, text_batch_size=text_batch, quiet=True, length_sorted=sort,
                              deduplicate=False)
        return run

    def theirs(batch):
        return lambda: st.encode(texts, batch_size=batch, show_progress_bar=False)

    default = "alignprobe default (sorted, 256 on CPU)"
    variants = {default: ours(None, True),
                "alignprobe batch 64, sorted": ours(64, True),
                "alignprobe batch 64, unsorted (before)": ours(64, False),
                **{f"SentenceTransformer.encode batch {b}": theirs(b) for b in (32, 64, 128, 256)}}
    best = dict.fromkeys(variants, 0.0)
    for _ in range(rounds):
        for name, run in variants.items():
            t0 = time.perf_counter()
            run()
            best[name] = max(best[name], len(texts) / (time.perf_counter() - t0))
    st_best = max(v for k, v in best.items() if k.startswith("Sentence"))
    for name, v in best.items():
        print(f"  {name:40s} {v:8.1f} captions/s   {v / st_best:.2f} of ST's best")
    print(f"  ratio alignprobe default / ST best : {best[default] / st_best:.3f}"
          "   (goal >= 0.8)")


def deduplication(data: str, rounds: int) -> None:
    """Section 5: `encode_source` on a caption set with templated duplicates, each distinct caption
    encoded once (the default) against every row encoded, interleaved rounds, best of `rounds`."""
    import alignprobe
    from alignprobe.probe.data.spec import flatten_captions, open_dataset
    from alignprobe.probe.embeddings.cache import EmbeddingCache
    from alignprobe.probe.embeddings.encoding import TextSource, encode_source

    texts = flatten_captions(open_dataset(data))[0]
    encoder = alignprobe.create_text_encoder("minilm", device="cpu")
    print(f"\n[dedup] minilm, {data} captions: {len(texts)} rows, {len(set(texts))} distinct, "
          f"torch threads {torch.get_num_threads()}")
    best, rows = {}, {}
    for _ in range(rounds):
        for name, dedup in (("every row (before)", False), ("each distinct once (now)", True)):
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                result = encode_source(encoder, TextSource(data, texts), cache=EmbeddingCache(Path(tmp)),
                                       quiet=True, deduplicate=dedup, storage_dtype="fp32")
                seconds = time.perf_counter() - t0
                rows[name] = result.embeddings.to_numpy()
            best[name] = min(best.get(name, float("inf")), seconds)
    for name, sec in best.items():
        print(f"  {name:28s} {sec:7.1f} s   {len(texts) / sec:8.1f} captions/s")
    before, now = best["every row (before)"], best["each distinct once (now)"]
    a, b = rows["every row (before)"], rows["each distinct once (now)"]
    print(f"  speed-up now / before : {before / now:.2f}x   (rows equal to {np.abs(a - b).max():.1e} max abs)")


def vit_backends(model_name: str, n: int, batch_sizes: list[int], rounds: int) -> None:
    """Section 6: a ViT (random-vit: timm ViT-S/16, 224 px) through alignprobe against torch eager
    (timm's SDPA attention, inference mode) at several batches and onnxruntime variants (spinning
    threads, the onnxruntime.transformers fusions), interleaved rounds on the same batches; the
    GEMM peak is measured in the same run, so the ViT's fraction of it is comparable."""
    import alignprobe

    encoder = alignprobe.create_vision_encoder(model_name, device="cpu")
    print(f"\n[vit] {model_name}: alignprobe runs {encoder.execution} ({encoder.execution_note}), {n} random "
          f"224 px inputs, torch threads {torch.get_num_threads()}")
    gen = torch.Generator().manual_seed(0)
    size = encoder.spec.preprocessing.size
    images = torch.randn(n, 3, size, size, generator=gen)
    flops = vit_flops(encoder)

    def batched(fn, b):
        return lambda x: torch.cat([fn(x[i:i + b]) for i in range(0, len(x), b)])

    variants = {f"alignprobe ({encoder.execution}) b{b}": batched(encoder.forward, b) for b in batch_sizes}
    for b in batch_sizes:
        variants[f"torch eager (SDPA) b{b}"] = batched(encoder._forward, b)
    if encoder.execution == "onnxruntime":
        variants[f"onnxruntime spinning b{batch_sizes[0]}"] = batched(spinning_session(encoder._onnx.path),
                                                                      batch_sizes[0])
        fused = transformers_fused(encoder)
        if fused is not None:
            variants[f"onnxruntime + transformers fusions b{batch_sizes[0]}"] = batched(fused, batch_sizes[0])
    eager = f"torch eager (SDPA) b{batch_sizes[0]}"
    with torch.inference_mode():
        want = variants[eager](images[:4]).numpy()
        errs = {k: float(np.abs(fn(images[:4]).numpy() - want).max() / np.abs(want).max())
                for k, fn in variants.items()}
    speed = timed_rounds(variants, [images], rounds)
    peak = gemm_peak()
    fastest = max(v for k, v in speed.items() if errs[k] <= 1e-4)
    for name, v in speed.items():
        print(f"  {name:44s} {v:6.1f} img/s   x{v / speed[eager]:.2f} eager   {v / fastest:.2f} of fastest   "
              f"{v * flops / peak:.2f} of GEMM peak   rel. error vs eager {errs[name]:.1e}")
    ours = speed[next(iter(variants))]
    print(f"  {flops:.2f} GFLOP/img (matmuls), GEMM peak {peak:.0f} GFLOP/s now: floor {peak / flops:.1f} img/s")
    print(f"  ratio alignprobe / fastest exact : {ours / fastest:.3f}   (goal >= 0.7)")


def vit_flops(encoder) -> float:
    """GFLOP per image of the encoder's forward (torch's FLOP counter: 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    size = encoder.spec.preprocessing.size
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder._forward(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def gemm_peak(n: int = 2048) -> float:
    """fp32 GEMM GFLOP/s of torch on this machine now (`gpu_check.gemm_peaks`, the one peak every
    benchmark here measures)."""
    from gpu_check import gemm_peaks  # this folder

    return gemm_peaks(torch.device("cpu"), n)["fp32"] / 1e9


def transformers_fused(encoder):
    """alignprobe's graph through `onnxruntime.transformers.optimizer` (model type "vit": fused
    LayerNorm / bias-GELU / attention where its patterns match), None where it fails."""
    try:
        from onnxruntime.transformers import optimizer

        model = encoder.model
        fused = optimizer.optimize_model(str(encoder._onnx.path), model_type="vit",
                                         num_heads=model.blocks[0].attn.num_heads, hidden_size=model.embed_dim,
                                         opt_level=0)
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
        print(f"  onnxruntime.transformers fusions: {stats}")
        path = Path(tempfile.mkdtemp()) / "fused.onnx"
        fused.save_model_to_file(str(path))
        return spinning_session(path, spinning=False)
    except Exception as exc:  # noqa: BLE001 - a benchmark variant; report and go on
        print(f"  onnxruntime.transformers optimizer failed: {type(exc).__name__}: {exc}")
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--images", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers [auto]")
    parser.add_argument("--model", default="random-vit", help="a small ViT (default: random-vit, ViT-S/16)")
    parser.add_argument("--backends", action="store_true", help="section 3: image backends (issue 20)")
    parser.add_argument("--backends-model", default="effnet-lite0", help="a timm CNN (section 3)")
    parser.add_argument("--captions", action="store_true", help="section 4: caption batching (issue 20)")
    parser.add_argument("--captions-n", type=int, default=4096, help="captions of section 4")
    parser.add_argument("--dedup", action="store_true", help="section 5: duplicate captions encoded once")
    parser.add_argument("--dedup-data", default="shapes:train", help="caption set of section 5")
    parser.add_argument("--vit", action="store_true", help="section 6: ViT backends (random-vit)")
    parser.add_argument("--vit-images", type=int, default=64, help="inputs of section 6")
    parser.add_argument("--vit-batches", default="64,32", help="batches of section 6 (first: alignprobe's "
                        "default, --batch-size 64)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of sections 3-4")
    parser.add_argument("--skip-e2e", action="store_true", help="skip section 1")
    parser.add_argument("--skip-cache", action="store_true", help="skip section 2")
    args = parser.parse_args()
    n = args.images or (64 if args.quick else 512)
    rows = 50_000 if args.quick else 1_000_000
    os.environ.setdefault("TQDM_DISABLE", "1")
    print(f"load average {os.getloadavg()[0]:.2f}, cpus {os.cpu_count()}")
    if args.backends:
        backends(args.backends_model, 64 if args.quick else (args.images or 256), args.batch_size, args.rounds)
    if args.captions:
        captions(512 if args.quick else args.captions_n, args.rounds)
    if args.dedup:
        deduplication(args.dedup_data, 1 if args.quick else args.rounds)
    if args.vit:
        vit_backends(args.model, 16 if args.quick else args.vit_images,
                     [int(b) for b in args.vit_batches.split(",")], 1 if args.quick else args.rounds)
    if not args.skip_e2e:
        forward_vs_e2e(args, n)
    if not args.skip_cache:
        cache_report(rows)


def forward_vs_e2e(args, n: int) -> None:
    import alignprobe
    from alignprobe.probe.data.spec import open_dataset

    encoder = alignprobe.create_vision_encoder(args.model, device="cpu")
    dataset = open_dataset("shapes")
    print(f"model {args.model} ({encoder.dim}-d), {n} shapes images, batch {args.batch_size}, "
          f"torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}")
    fwd = forward_only(encoder, dataset, n, args.batch_size)
    e2e = end_to_end(encoder, dataset, n, args.batch_size, args.workers)
    print(f"forward only      : {fwd:8.1f} images/s")
    print(f"end to end        : {e2e:8.1f} images/s")
    print(f"ratio e2e/forward : {e2e / fwd:8.3f}   (goal >= 0.9)")


def cache_report(rows: int) -> None:
    res = cache_open(rows, 1024, shard_rows=65536)
    print(f"cache {rows} x 1024 fp16 ({res['file_gib']:.2f} GiB on disk):")
    print(f"  open            : {res['open_s'] * 1000:8.1f} ms, RSS +{res['open_rss_mib']:.1f} MiB")
    print(f"  gather 4096 random rows: {res['gather_4096_s'] * 1000:8.1f} ms; private memory +"
          f"{res['gather_anon_mib']:.1f} MiB (the {res['out_mib']:.0f} MiB fp32 result); RSS incl. mapped "
          f"page cache +{res['gather_rss_mib']:.0f} MiB (file-backed, evictable: the kernel maps whole "
          f"folios around each faulted row)")


if __name__ == "__main__":
    main()
