"""Does the caption path teach the encoder the main object's shape? (experiments/README.md)

    python experiments/shape_probe.py --captions colour-shape --steps 400

Trains the demo encoder + demo caption decoder (no generation branch, no text tower) on the
shipped demo VAE's latents of the synthetic world, with one of four caption kinds for the main
(largest) object: ``colour-shape`` ("red circle"), ``shape-colour`` ("circle red"), ``shape``
("circle") or ``long`` (the world's long caption). AdamW (0.9, 0.95), weight decay 0.05,
warmup + cosine, grad clip 1, batch 32, the demo's first-stage resolution (96 px).

Every ``--every`` steps it prints, on ``--val`` held-out images, the teacher-forced accuracy of
the main object's shape word and colour word (chance 1/8 each) and the accuracy of a linear
probe trained online on the detached, mean-pooled tokens (how much shape the encoder carries,
whatever the decoder does with it). ``--depth`` / ``--lr`` vary the decoder and the peak LR.

Two switches look at why colour words hold the shape back:

- ``--grad-every N`` prints, every N steps, the training batch's loss on the shape words and on
  the colour words, the norm of each one's gradient on the encoder's parameters, and the
  cosine between the two gradients.
- ``--encoder-grad shape`` lets only the shape words' loss reach the encoder; the decoder
  still learns every word. ``--encoder-grad balanced`` lets every word's loss reach the
  encoder, but scales the other words' gradient on the tokens down to the norm of the shape
  words' gradient whenever it is larger. Both run the decoder twice, once per word group; the
  loss value stays the caption loss over all words.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from openvision3.config import ov3_optim
from openvision3.demo.presets import demo_model
from openvision3.demo.synthetic import COLORS, SHAPES, SyntheticWorld, long_caption
from openvision3.losses.caption import caption_loss
from openvision3.models.openvision3 import OpenVision3
from openvision3.models.vae import FrozenVAE
from openvision3.tokenizer import Tokenizer
from openvision3.train.optim import build_optimizer, build_scheduler

CAPTIONS = {
    "colour-shape": lambda s: f"{s.objects[0].color} {s.objects[0].shape}",
    "shape-colour": lambda s: f"{s.objects[0].shape} {s.objects[0].color}",
    "shape": lambda s: s.objects[0].shape,
    "long": long_caption,
}


def latents(vae: FrozenVAE, world: SyntheticWorld, split: str, n: int, res: int) -> torch.Tensor:
    """VAE posterior means (n, 16, res/8, res/8) of the first ``n`` scenes of ``split``."""
    out = []
    for start in range(0, n, 128):
        images = [
            world.render(world.scene(split, i), res) for i in range(start, min(n, start + 128))
        ]
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            out.append(vae.encode(x))
    return torch.cat(out)


def word_positions(ids: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
    """Index (B,) of the first token of each row that is one of ``words`` (1-D ids)."""
    hit = torch.isin(ids, words)
    if not bool(hit.any(1).all()):
        raise ValueError("a caption has no word of the set")
    return hit.float().argmax(1)


def masked(targets: torch.Tensor, keep: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``targets`` with every position outside ``keep`` set to ``pad_id`` (ignored by the loss)."""
    return torch.where(keep, targets, torch.full_like(targets, pad_id))


def loss_on_words(out: dict, words: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Caption loss of the targets that are one of ``words`` (1-D tensor of ids)."""
    keep = torch.isin(out["targets"], words)
    return caption_loss(out["logits"], masked(out["targets"], keep, pad_id), pad_id)


def encoder_grads(losses: list[torch.Tensor], params: list[torch.Tensor]) -> list[torch.Tensor]:
    """The flat gradient of each loss on ``params`` (zeros where a parameter is unused)."""
    out = []
    for loss in losses:
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        out.append(
            torch.cat(
                [(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(grads, params)]
            )
        )
    return out


def log_grads(step, out, model, shape_words, colour_words, captions, pad) -> None:
    """Print the shape (and colour) words' loss, gradient norm on the encoder and cosine."""
    words = {"shape": shape_words}
    if captions != "shape":
        words["colour"] = colour_words
    losses = [loss_on_words(out, w, pad) for w in words.values()]
    params = [p for n, p in model.encoder.named_parameters() if not n.startswith("head")]
    grads = encoder_grads(losses, params)
    parts = [
        f"{name} words: loss {lw.item():.3f} |g_enc| {g.norm().item():.2e}"
        for name, lw, g in zip(words, losses, grads)
    ]
    if len(grads) == 2:
        parts.append(f"cosine {F.cosine_similarity(grads[0], grads[1], dim=0).item():+.2f}")
    print(f"grad {step:5d}  " + "  ".join(parts), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--captions", choices=sorted(CAPTIONS), default="colour-shape")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--depth", type=int, default=None, help="caption decoder depth (demo: 3)")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--grad-every", type=int, default=0, help="gradient log every N steps")
    ap.add_argument("--encoder-grad", choices=("all", "shape", "balanced"), default="all")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    world, tok = SyntheticWorld(args.seed), Tokenizer(24)
    cfg = dataclasses.replace(demo_model(), decoder=None, text=None)
    depth = {"depth": args.depth} if args.depth is not None else {}
    cfg.caption = dataclasses.replace(cfg.caption, pack_targets=False, **depth)
    vae = FrozenVAE(demo_model().vae)
    n_train, b = args.steps * args.batch_size, args.batch_size
    print(f"encoding {n_train} + {args.val} scenes at {args.resolution} px", flush=True)
    z_train = latents(vae, world, "train", n_train, args.resolution)
    z_val = latents(vae, world, "val", args.val, args.resolution)
    scenes = lambda split, n: [world.scene(split, i) for i in range(n)]  # noqa: E731
    train_scenes, val_scenes = scenes("train", n_train), scenes("val", args.val)
    caption = CAPTIONS[args.captions]
    c_train = tok([caption(s) for s in train_scenes])
    c_val = tok([caption(s) for s in val_scenes])
    shape_of = lambda ss: torch.tensor([SHAPES.index(s.objects[0].shape) for s in ss])  # noqa: E731
    y_train, y_val = shape_of(train_scenes), shape_of(val_scenes)
    # The first token id of each shape / colour name (1-D tensors of ids).
    shape_words, colour_words = (tok(list(names))[:, 1] for names in (SHAPES, COLORS))
    if args.encoder_grad != "all" and args.captions == "shape":
        ap.error(f"--encoder-grad {args.encoder_grad} needs captions with other words too")
    if args.encoder_grad != "all" and args.grad_every:
        ap.error("--grad-every logs the plain caption loss: use it with --encoder-grad all")
    sp = word_positions(c_val, shape_words)
    cp = word_positions(c_val, colour_words) if args.captions != "shape" else None

    model = OpenVision3(cfg, vae=None)
    probe = torch.nn.Linear(cfg.encoder.width, len(SHAPES))
    probe_opt = torch.optim.AdamW(probe.parameters(), lr=3e-3)
    ocfg = ov3_optim(weight_decay=0.05)  # the demo's AdamW
    opt = build_optimizer(model, ocfg, args.lr)
    sched = build_scheduler(opt, warmup_steps=min(30, args.steps), total_steps=args.steps)
    rows, pad = torch.arange(args.val), cfg.caption.pad_id
    t0 = time.perf_counter()
    for step in range(args.steps):
        z, c = z_train[step * b : (step + 1) * b], c_train[step * b : (step + 1) * b]
        tokens = model.encoder(z)
        opt.zero_grad(set_to_none=True)
        if args.encoder_grad == "all":
            out = model.captioner(tokens, c)
            loss = caption_loss(out["logits"], out["targets"], pad)
            if args.grad_every and step % args.grad_every == 0:
                log_grads(step, out, model, shape_words, colour_words, args.captions, pad)
            loss.backward()
        else:
            # The decoder runs on two detached copies of the tokens: the shape words' loss on
            # one, every other word's on the other. Their token-means recombine into the
            # caption loss over all words; the two token gradients then reach the encoder.
            t_shape, t_rest = (tokens.detach().requires_grad_() for _ in range(2))
            out_s, out_r = model.captioner(t_shape, c), model.captioner(t_rest, c)
            is_shape = torch.isin(out_s["targets"], shape_words)
            rest = ~is_shape & (out_s["targets"] != pad)
            n_shape, n_rest = is_shape.sum(), rest.sum()
            loss = (
                loss_on_words(out_s, shape_words, pad) * n_shape
                + caption_loss(out_r["logits"], masked(out_r["targets"], rest, pad), pad) * n_rest
            ) / (n_shape + n_rest)
            loss.backward()  # decoder gradients; token gradients in t_shape.grad, t_rest.grad
            if args.encoder_grad == "shape":
                scale = 0.0
            else:
                scale = min(1.0, (t_shape.grad.norm() / t_rest.grad.norm().clamp_min(1e-30)).item())
            tokens.backward(t_shape.grad + scale * t_rest.grad)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        probe_loss = F.cross_entropy(
            probe(tokens.detach().mean(1)), y_train[step * b : (step + 1) * b]
        )
        probe_opt.zero_grad(set_to_none=True)
        probe_loss.backward()
        probe_opt.step()
        if (step + 1) % args.every and step + 1 != args.steps:
            continue
        model.eval()
        with torch.no_grad():
            val_tokens = model.encoder(z_val)
            pred = model.captioner(val_tokens, c_val)["logits"].argmax(-1)  # predicts ids[:, t+1]
            shape_acc = (pred[rows, sp - 1] == c_val[rows, sp]).float().mean().item()
            colour_acc = (
                (pred[rows, cp - 1] == c_val[rows, cp]).float().mean().item()
                if cp is not None
                else None
            )
            probe_acc = (probe(val_tokens.mean(1)).argmax(1) == y_val).float().mean().item()
        model.train()
        colour = f"{colour_acc:.3f}" if colour_acc is not None else "-"
        print(
            f"step {step + 1:5d}  loss {loss.item():.3f}  shape {shape_acc:.3f}  colour {colour}  "
            f"probe {probe_acc:.3f}  {time.perf_counter() - t0:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
