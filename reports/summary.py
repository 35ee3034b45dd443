"""A readable plain-text summary of one run record (what `alignprobe run` prints)."""
from __future__ import annotations

#: Display order and labels; metrics not listed are appended in name order.
_LABELS = {
    "kmeans_nmi": "k-means NMI (clustering quality)",
    "kmeans_ari": "k-means ARI",
    "linear_probe_top1": "linear probe top-1 (separability)",
    "linear_probe_top5": "linear probe top-5",
    "zero_shot_top1": "zero-shot top-1 (alignment)",
    "zero_shot_top5": "zero-shot top-5",
    "i2t_r1": "image->text R@1",
    "i2t_r5": "image->text R@5",
    "i2t_r10": "image->text R@10",
    "t2i_r1": "text->image R@1",
    "t2i_r5": "text->image R@5",
    "t2i_r10": "text->image R@10",
    "mutual_knn": "mutual k-NN (raw features)",
    "cka": "CKA (raw features)",
    "cknna": "CKNNA (raw features)",
    "mutual_knn_null": "mutual k-NN, random pairing (chance)",
    "cka_null": "CKA, random pairing (chance)",
    "cknna_null": "CKNNA, random pairing (chance)",
    "probe_val_loss": "probe held-out loss",
    "probe_epochs": "probe epochs",
}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def format_run_summary(record: dict) -> str:
    metrics = record.get("metrics", {})
    order = [k for k in _LABELS if k in metrics]
    knn = sorted((k for k in metrics if k.startswith("knn_")), key=lambda k: int(k.split("@")[-1]))
    order[2:2] = knn
    order += sorted(k for k in metrics if k not in order)
    lines = [f"alignment probe: vision={record.get('vision')}  text={record.get('text')}  "
             f"seed={record.get('seed')}"]
    data = record.get("data", {})
    for role in ("pairs", "labelled_train", "labelled", "retrieval"):
        if role in data:
            info = data[role]
            skipped = info.get("skipped_images")
            lines.append(f"  {role:<9} {info.get('name')} (n={info.get('n')}"
                         + (f", {skipped} images skipped" if skipped else "") + ")")
    details = record.get("details", {})
    # Say what the numbers were measured on: the vision protocol, the similarity sample, allowed overlap.
    if details.get("vision_protocol"):
        lines.append(f"  vision quality protocol: {details['vision_protocol']}")
    if details.get("similarity_n") is not None:
        lines.append(f"  similarity on {details['similarity_n']} held-out pairs "
                     f"(chance levels: {details.get('similarity_null_permutations', '?')} random pairings)")
    for role, ov in (details.get("overlap") or {}).items():
        if isinstance(ov, dict) and ov.get("n"):
            lines.append(f"  WARNING: {ov['n']} of {ov.get('n_test')} {role} images are also training images "
                         "(--allow-overlap)")
    width = max([len(_LABELS.get(k, k)) for k in order] + [6])
    lines.append("")
    lines.append(f"  {'metric'.ljust(width)}  value")
    lines.append(f"  {'-' * width}  ------")
    for key in order:
        lines.append(f"  {_LABELS.get(key, key.replace('knn_top1@', 'k-NN top-1, k=')).ljust(width)}  "
                     f"{_fmt(metrics[key])}")
    total = record.get("timings_s", {}).get("total")
    if total is not None:
        lines.append(f"\n  total time: {total:.1f} s")
    return "\n".join(lines)
