"""Worker for tests/test_sail_distributed.py, run under `torchrun --nproc_per_node 2` (gloo, CPU).

Also imported by the test for the shared data and settings, so both sides
build exactly the same inputs. Usage: ``torchrun ... sail_dist_worker.py OUT.pt``.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

N_IMAGES, D_IMG, D_TXT, BATCH = 64, 12, 10, 16


def make_data(seed: int = 0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N_IMAGES, 4))
    img = z @ rng.standard_normal((4, D_IMG)) + 0.3 * rng.standard_normal((N_IMAGES, D_IMG))
    txt = z @ rng.standard_normal((4, D_TXT)) + 0.3 * rng.standard_normal((N_IMAGES, D_TXT))
    extra = z @ rng.standard_normal((4, D_TXT)) + 0.3 * rng.standard_normal((N_IMAGES, D_TXT))
    return img.astype(np.float32), txt.astype(np.float32), extra.astype(np.float32)


def make_model():
    from alignprobe.probe.training.heads import AlignmentModel

    torch.manual_seed(0)
    return AlignmentModel(D_IMG, D_TXT, out_dim=8, image_head="star", text_head="mlp", width=2)


LOSS_CASES = (("sigmoid", "n2"), ("sigmoid", "n"), ("infonce", "n2"))


def loss_and_grads(ctx, rows: np.ndarray, loss: str, normalization: str):
    """Loss of the global batch ``rows`` (this rank's share of it) and the summed gradients."""
    from alignprobe.probe.training import distributed as D
    from alignprobe.probe.training.engine import global_loss

    img, txt, extra = (torch.from_numpy(a) for a in make_data())
    model = make_model()
    share = len(rows) // ctx.world_size
    mine = torch.from_numpy(rows[ctx.rank * share : (ctx.rank + 1) * share])
    zi = model.image_head(img[mine])
    zt = model.text_head(torch.cat([txt[mine], extra[mine]]))
    positive_index = torch.arange(share).repeat(2)
    value = global_loss(zi, zt, positive_index, model.logit_scale.exp(), model.logit_bias, n_global=len(rows),
                        loss=loss, normalization=normalization, chunk_size=5, positives=2, ctx=ctx)
    value.backward()
    params = dict(model.named_parameters())
    D.all_reduce_sum_([p.grad for p in params.values()], ctx)
    grads = {k: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for k, p in params.items()}
    return D.sum_scalar(value.item(), ctx), grads


def train_config():
    from alignprobe.probe.training.config import TrainConfig

    return TrainConfig(out_dim=8, image_head="star", text_head="mlp", width=2, batch_size=32, micro_batch=6,
                      chunk_size=7, optimizer="adamw", lr=1e-2, weight_decay=1e-4, epochs=2, warmup_fraction=0.3,
                      val_fraction=0.25, device="cpu", prefetch=False, checkpoint_every=None,
                      norm_bias_init="center")  # every rank must start from the same centred biases


def train(ctx):
    from alignprobe.probe.training.engine import Trainer

    img, txt, extra = make_data()
    trainer = Trainer(train_config(), quiet=True, dist=ctx).fit(img, txt, extra_text_emb=extra)
    state = {k: v.detach().clone() for k, v in trainer.model_.state_dict().items()}
    return state, [h["val_loss"] for h in trainer.history_], [h["train_loss"] for h in trainer.history_]


def main(out: str) -> None:
    from alignprobe.probe.training import distributed as D

    torch.set_num_threads(1)
    ctx = D.init_distributed("gloo")
    rows = np.random.default_rng(1).permutation(N_IMAGES)[:BATCH]
    result = {"world_size": ctx.world_size, "losses": {}}
    for loss, normalization in LOSS_CASES:
        result["losses"][f"{loss}-{normalization}"] = loss_and_grads(ctx, rows, loss, normalization)
    result["train"] = train(ctx)
    if ctx.is_main:
        torch.save(result, out)
    D.shutdown(ctx)


if __name__ == "__main__":
    main(sys.argv[1])
