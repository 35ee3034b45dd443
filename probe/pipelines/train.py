"""`alignprobe train`: SAIL training of one encoder pair end to end, or of a sweep's best pairs.

registry -> encode (cached; the training pairs stay memory-mapped) -> the training
engine (`Trainer`, the same one `alignprobe run` probes with)
-> checkpoint directory (``aligned.json``) -> optionally a ``"kind": "sail"``
result record beside the probe records, so one report shows probe and SAIL
scores of each pair side by side.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


from alignprobe.config import EncodeOptions
from alignprobe.errors import DataError, ValidationError
from alignprobe.hashing import slug, stable_hash
from alignprobe.probe.evals.aligned import evaluate_aligned
from alignprobe.probe.pipelines.aligned import AlignedModel, load_aligned
from alignprobe.probe.pipelines.run import reusable_record
from alignprobe.probe.pipelines.workspace import RESULT_FORMAT, EncoderPair, Workspace, resolve_pair_recipe
from alignprobe.probe.training import distributed as D
from alignprobe.probe.training.config import PRESETS, TrainConfig
from alignprobe.probe.training.engine import Trainer
from alignprobe.probe.training.evaluation import RetrievalData, ZeroShotData, evaluate
from alignprobe.probe.training.model_file import ALIGNED_FILE, read_model_file
from alignprobe.reports.metric_info import metric_info
from alignprobe.reports.records import now_iso, read_record, record_path, write_record
from alignprobe.reports.store import load_results

log = logging.getLogger("alignprobe.train")


@dataclass
class SailRunConfig(EncoderPair):
    """Everything that determines a SAIL training run's result (its hash names the record).

    ``preset``: None trains the ``"sail"`` recipe, adapted below 100k pairs
    (each change printed and recorded); ``"sail"`` / ``"sail-probe"`` force
    that reference recipe at any size. ``train`` holds `TrainConfig` fields
    the user set (they override single values and are listed as changes).
    ``selection``: a data spec scored for ``select_by`` a metric (never one of
    the reported sets).
    """

    vision: str
    text: str
    pairs: str = "shapes:train"
    labelled: str | None = "shapes:test"
    retrieval: str | None = "shapes:test"
    seed: int = 0
    vision_pooling: str | None = None
    text_pooling: str | None = None
    vision_layer: int | None = None
    text_layer: int | None = None
    preset: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    selection: str | None = None
    winoground: str | None = None  # the paper's other evaluations of the trained heads (probe/evals)
    mmvp: str | None = None
    segmentation: str | None = None

    def __post_init__(self):
        if self.preset is not None and self.preset not in PRESETS:
            raise ValidationError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        known = set(TrainConfig.__dataclass_fields__)
        unknown = sorted(set(self.train) - known)
        if unknown:
            raise ValidationError(f"unknown training option(s) {unknown}; known: {sorted(known)}")
        TrainConfig.preset(self.preset or "sail", **self.train)  # one validation step, before any work
        if self.train.get("select_by", "val_loss") != "val_loss" and not self.selection:
            raise ValidationError(
                f"select_by={self.train['select_by']!r} (--select-by) picks the epoch by a downstream score: "
                f"give it a selection set of its own with selection=SPEC (--selection SPEC) (selecting on a "
                f"reported test set would inflate its score)")

    def data_specs(self) -> dict[str, str]:
        """The data sets this run reads, by role (their fingerprints are part of its reuse key)."""
        specs = {"pairs": self.pairs, "labelled": self.labelled, "retrieval": self.retrieval,
                 "selection": self.selection}
        return {role: spec for role, spec in specs.items() if spec}

    def as_dict(self) -> dict:
        out = asdict(self)
        out["train"] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.train.items())}
        return out

    def config_hash(self) -> str:
        return stable_hash({"kind": "sail", **self.as_dict()}, length=12)

    def group_hash(self) -> str:
        return stable_hash({"kind": "sail", **{k: v for k, v in self.as_dict().items() if k != "seed"}}, length=12)


@dataclass
class SailRunResult:
    record: dict
    run_dir: Path
    record_path: Path | None
    reused: bool
    notes: list[str]


# --------------------------------------------------------------------------- encoding


def check_resume_matches(run_dir: Path, ws: Workspace, config: SailRunConfig) -> None:
    """Refuse to resume a run on other data or other encoders than it started with, naming what differs.

    The run's ``aligned.json`` (written after each epoch) records both encoders' `EncoderRequest`
    keys and the fingerprints of the data it read; a run killed before its first epoch ended has
    none yet and resumes from its checkpoint as it is."""
    try:
        info, file = read_model_file(run_dir)
    except ValidationError:
        return
    meta = info.get("metadata") or {}
    differs = []
    for modality in ("vision", "text"):
        recorded = ((info.get(modality) or {}).get("request") or {}).get("key")
        if recorded is not None and recorded != ws.requests[modality].key():
            differs.append(f"the {modality} encoder ({ws.requests[modality].label!r} now)")
    recorded_data = meta.get("data_fingerprints") or {}
    for role, spec in config.data_specs().items():
        if role in recorded_data and recorded_data[role] != ws.fingerprint(spec):
            differs.append(f"the {role} data ({spec!r} has other contents now)")
    if differs:
        raise ValidationError(f"cannot resume {run_dir}: it was started with other inputs -- "
                              f"{'; '.join(differs)}. Resume with the inputs it started with, or start a new "
                              f"run (another run_dir (--run-dir), or overwrite=True (--overwrite) to replace this one)")


def eval_sets(workspace: Workspace, labelled: str | None, retrieval: str | None
              ) -> tuple[ZeroShotData | None, RetrievalData | None]:
    """Zero-shot and retrieval sets as in-memory embeddings (small by nature); a falsy spec skips one."""
    zero_shot = workspace.zero_shot_data("labelled", labelled) if labelled else None
    retrieval_data = workspace.retrieval_data("retrieval", retrieval) if retrieval else None
    return zero_shot, retrieval_data


def selection_sets(workspace: Workspace, spec: str | None):
    """A selection set for ``select_by`` a metric: zero-shot if it is labelled, retrieval if captioned."""
    if not spec:
        return None
    dataset = workspace.dataset(spec)
    zero_shot = workspace.zero_shot_data("selection", spec) if dataset.class_names else None
    retrieval = workspace.retrieval_data("selection", spec) if dataset.has_captions else None
    if zero_shot is None and retrieval is None:
        raise DataError(f"selection {spec!r} (--selection) has neither class names nor captions to score")
    return zero_shot, retrieval


def encoder_entry(workspace: Workspace, modality: str) -> dict:
    """What `load_aligned` needs to rebuild a frozen encoder (its `EncoderRequest`), and what identifies it."""
    encoder = workspace.encoder(modality)
    manifest = encoder.manifest()
    return {"request": encoder.request.to_dict(), "name": encoder.spec.name, "pooling": manifest.get("pooling"),
            "layer": manifest.get("layer"), "dim": encoder.dim, "hub_id": manifest.get("hub_id"),
            "revision": manifest.get("revision"), "manifest": manifest}


# --------------------------------------------------------------------------- one pair


def default_run_dir(root: str | Path, config: SailRunConfig) -> Path:
    return Path(root) / f"{slug(config.vision)}__{slug(config.text)}__{config.config_hash()}"


def train_pair(config: SailRunConfig, run_dir: str | Path, *, options: EncodeOptions | None = None,
               results_dir: str | Path | None = None, resume: bool = False, overwrite: bool = False,
               force: bool = False, extra_record: dict | None = None) -> SailRunResult:
    """Encode the data (cached), train SAIL heads into ``run_dir`` and, with
    ``results_dir``, write a ``"kind": "sail"`` record there.

    A finished record with the same config hash in ``results_dir`` is reused
    unless ``force`` (or ``resume``): a finished result is never recomputed by accident.
    """
    options = options or EncodeOptions()
    run_dir = Path(run_dir)
    ctx = D.init_distributed()
    ws = Workspace(config.request("vision"), config.request("text"), options, dist=ctx)
    key = ws.reuse_key({"kind": "sail", **config.as_dict()}, config.data_specs())
    path = None
    if results_dir is not None:
        path = record_path(results_dir, config.vision, config.text, config.config_hash(), kind="sail")
        if not (force or resume):
            record = reusable_record(path, key)
            if record is not None:
                kept = Path(record.get("run_dir") or Path(record.get("checkpoint", run_dir)).parent)
                return SailRunResult(record, kept, path, True, [])
    if resume:
        check_resume_matches(run_dir, ws, config)

    started, t0 = now_iso(), time.perf_counter()
    ws.check()
    pairs = ws.encode("pairs", config.pairs, captions=True, distributed=True)
    zero_shot = retrieval = selection = None
    if ctx.is_main:
        zero_shot, retrieval = eval_sets(ws, config.labelled, config.retrieval)
        selection = selection_sets(ws, config.selection)
    D.barrier(ctx)

    train_config, changes, notes, preset = resolve_pair_recipe(
        "sail", config.preset, config.train, seed=config.seed, device=options.device,
        usable_pairs=pairs.usable_pairs())
    metadata = {
        "reuse_key": key,
        "data_fingerprints": {role: ws.fingerprint(spec) for role, spec in config.data_specs().items()},
        "vision": encoder_entry(ws, "vision"),
        "text": encoder_entry(ws, "text"),
        "run_config": config.as_dict(),
        "recipe_changes": changes,
        "data": ws.data_info,
    }
    trainer = Trainer(train_config, run_dir, quiet=options.quiet, dist=ctx, metadata=metadata,
                      overwrite=overwrite or force, notes=notes)
    t_train = time.perf_counter()
    trainer.fit(pairs.images, pairs.captions, pairs.caption_image, zero_shot=zero_shot, retrieval=retrieval,
                selection=selection, resume=resume)
    ws.timings["train"] = time.perf_counter() - t_train
    ws.timings["total"] = time.perf_counter() - t0
    notes = trainer.summary()
    # the engine's bookkeeping (train_epochs, ...) is named after the run kind in the records
    metrics = {(f"sail_{k[len('train_'):]}" if k.startswith("train_") else k): v for k, v in trainer.metrics_.items()}
    evaluations = {k: v for k, v in dict(winoground=config.winoground, mmvp=config.mmvp,
                                         segmentation=config.segmentation).items() if v}
    if evaluations and ctx.is_main:
        trained = AlignedModel(trainer.model_, metadata, device=trainer.device_, pool=ws.pool)
        metrics.update(evaluate_aligned(trained, progress=not options.quiet, **evaluations))
    record = ws.record_fields("sail", config, started)
    record.update({
        "train_config": train_config.to_dict(),
        "metrics": metrics,
        "details": {"preset": preset, "preset_forced": config.preset is not None, "recipe_changes": changes,
                    "train_captions": int(trainer.train_captions_), "train_images": int(len(trainer.train_index_))},
        "best_epoch": trainer.best_epoch_,
        "notes": notes,
        "world_size": ctx.world_size,
        "reuse_key": key,
        "result_format": RESULT_FORMAT,
        "run_dir": str(run_dir),
        "checkpoint": str(trainer.checkpoint_) if trainer.checkpoint_ else str(run_dir / ALIGNED_FILE),
        **(extra_record or {}),
    })
    if path is not None and ctx.is_main:
        write_record(path, record)
    return SailRunResult(record, run_dir, path, False, notes)


# --------------------------------------------------------------------------- from a sweep


def pick_top_pairs(results_dir: str | Path, top_k: int, by: str) -> list[dict]:
    """The ``top_k`` best (vision, text) pairs of a sweep's probe records by metric ``by``.

    Seeds of one experiment are averaged first. Returns, best first, dicts with
    ``vision``, ``text``, ``score``, ``n_seeds`` and ``record`` (the probe
    record of the lowest seed: its config names the data and pooling).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValidationError(f"top_k (--top-k) must be a positive int, got {top_k!r}")
    df = load_results(results_dir)
    df = df[df["kind"] == "probe"]
    if df.empty:
        raise ValidationError(f"{results_dir} holds no probe records; run `alignprobe sweep --results-dir {results_dir}` first")
    if by not in df.columns:
        metrics = [c for c in df.columns if c not in ("kind", "status", "vision", "text", "path") and df[c].dtype.kind == "f"]
        raise ValidationError(f"metric {by!r} is not in the probe records of {results_dir}; available: {', '.join(metrics)}")
    higher = metric_info(by).higher_is_better
    if higher is None:
        raise ValidationError(f"metric {by!r} has no better direction; pick an alignment metric such as zero_shot_top1 or i2t_r1")
    df = df[df[by].notna()]
    if df.empty:
        raise ValidationError(f"no probe record of {results_dir} has a value for {by!r}")
    scores = df.groupby(["vision", "text"], sort=False)[by].agg(["mean", "count"]).reset_index()
    scores = scores.sort_values(["mean", "vision", "text"], ascending=[not higher, True, True], kind="stable")
    picked = []
    for _, row in scores.head(top_k).iterrows():
        rows = df[(df["vision"] == row["vision"]) & (df["text"] == row["text"])].sort_values("seed")
        picked.append({"vision": row["vision"], "text": row["text"], "score": float(row["mean"]),
                       "n_seeds": int(row["count"]), "record": read_record(rows.iloc[0]["path"]),
                       "record_path": rows.iloc[0]["path"]})
    return picked


def train_from_sweep(results_dir: str | Path, top_k: int, by: str, *, out_root: str | Path | None = None,
                     preset: str | None = None, train: dict | None = None, data: dict | None = None,
                     options: EncodeOptions | None = None, resume: bool = False, force: bool = False
                     ) -> list[SailRunResult]:
    """Train SAIL heads for the ``top_k`` best pairs of a sweep (by ``by``) and add
    their ``"kind": "sail"`` records to ``results_dir``.

    Each pair trains on the data its probe was run on (``pairs``, ``labelled``,
    ``retrieval``, pooling and seed from its record) unless ``data`` overrides
    them; checkpoints go to ``out_root/<vision>__<text>__<hash>/``
    (``out_root`` defaults to ``results_dir/sail``).
    """
    out_root = Path(out_root) if out_root is not None else Path(results_dir) / "sail"
    results = []
    for pick in pick_top_pairs(results_dir, top_k, by):
        probe_config = pick["record"].get("config") or {}
        # The encoders exactly as the probe ran them: names as given plus layer and pooling overrides
        # (the record's "vision" / "text" are display labels such as NAME@N or NAME[cls]).
        values = {k: probe_config[k] for k in ("pairs", "labelled", "retrieval", "seed", "vision_pooling",
                                               "text_pooling", "vision_layer", "text_layer") if k in probe_config}
        values.update({k: v for k, v in (data or {}).items() if v is not None})
        config = SailRunConfig(vision=probe_config.get("vision", pick["vision"]),
                               text=probe_config.get("text", pick["text"]), preset=preset, train=dict(train or {}),
                               **values)
        log.info("training SAIL heads for %s x %s (%s = %.4g)", pick["vision"], pick["text"], by, pick["score"])
        results.append(train_pair(
            config, default_run_dir(out_root, config), options=options, results_dir=results_dir, resume=resume,
            force=force, extra_record={"selected_by": {"metric": by, "probe_score": pick["score"],
                                                       "probe_record": str(pick["record_path"])}}))
    return results


# --------------------------------------------------------------------------- evaluation of a checkpoint


def evaluate_checkpoint(path: str | Path, *, labelled: str | None = None, retrieval: str | None = None,
                        options: EncodeOptions | None = None, which: str = "best",
                        allow_unfinished: bool = False, evaluations: dict | None = None,
                        trust_remote_code: bool = False) -> dict[str, Any]:
    """Zero-shot and retrieval metrics of a trained model on labelled / captioned data.

    ``labelled`` / ``retrieval``: data specs; None uses the run's own
    evaluation sets (from its ``aligned.json``), ``""`` skips that part.
    Images and texts are encoded through the checkpoint's frozen encoders -- rebuilt from
    their recorded `EncoderRequest`s -- with the embedding cache. ``trust_remote_code``: as for
    `load_aligned`. Returns ``{"metrics": {...}, "labelled": spec, "retrieval": spec, "model": path}``.
    """
    options = options or EncodeOptions()
    aligned = load_aligned(path, device=options.device, encoder_dtype=options.dtype, which=which,
                           trust_remote_code=trust_remote_code)
    info = aligned.info
    unfinished = None
    if not info.get("finished", True):
        epoch = (info.get("best") or {}).get("epoch") if which == "best" else info.get("epochs_run")
        total = (info.get("train_config") or {}).get("epochs")
        unfinished = (f"{aligned.path} is an unfinished training run ({info.get('epochs_run')} of {total} epochs "
                      f"done): the weights evaluated are those of epoch {epoch} ({which})")
        if not allow_unfinished:
            raise ValidationError(f"{unfinished}; finish it with `alignprobe train --resume --run-dir "
                                  f"{aligned.path.parent}` (same flags), or pass allow_unfinished=True "
                                  f"(--allow-unfinished) to evaluate it as it is")
    run_config = (info.get("metadata") or {}).get("run_config") or {}
    labelled = run_config.get("labelled", "shapes:test") if labelled is None else labelled
    retrieval = run_config.get("retrieval", "shapes:test") if retrieval is None else retrieval
    evaluations = {k: v for k, v in (evaluations or {}).items() if v is not None}
    if not labelled and not retrieval and not evaluations:
        raise ValidationError("nothing to evaluate: give labelled=, retrieval=, or one of the evaluations "
                              "(winoground, mmvp, segmentation)")
    ws = Workspace(aligned.request("vision"), aligned.request("text"), options)
    aligned.use_pool(ws.pool)  # one load of each encoder for the cache misses and the evaluations
    zero_shot, retrieval_data = eval_sets(ws, labelled, retrieval)
    metrics = evaluate(lambda x: aligned.transform_image(x).numpy(), lambda x: aligned.transform_text(x).numpy(),
                       zero_shot, retrieval_data) if (zero_shot is not None or retrieval_data is not None) else {}
    if evaluations:
        metrics.update(evaluate_aligned(aligned, progress=not options.quiet, **evaluations))
    return {"metrics": metrics, "labelled": labelled or None, "retrieval": retrieval or None,
            "model": str(aligned.path), "data": ws.data_info, "unfinished": unfinished}
