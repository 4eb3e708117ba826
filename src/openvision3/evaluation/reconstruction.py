"""Reconstruction quality: PSNR, SSIM and (optionally) LPIPS of ``model.reconstruct``.

All metrics are measured on images quantised the way they would be saved: [-1, 1] floats are
mapped to [0, 255] and ROUNDED to integers (truncation would bias every pixel down by half a
level on average). rFID comes from an optional ``fid.ReconstructionFID`` fed in the same pass.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable

import torch
from torch import nn

from openvision3.data.transforms import to_uint8
from openvision3.distributed.process import get_rank, get_world_size, is_distributed, is_main
from openvision3.evaluation.reduce import (
    MetricAccumulator,
    evaluating,
    gather_objects_to_rank0,
    model_device,
)


def _as_uint8(images: torch.Tensor) -> torch.Tensor:
    return images if images.dtype == torch.uint8 else to_uint8(images)


def psnr_uint8(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) with data range 255 on uint8-rounded images.

    Args:
        x, y: (B, 3, H, W) floats in [-1, 1] (rounded to uint8 here) or uint8 images.

    Returns:
        (B,) float64; ``inf`` where the two quantised images are identical.
    """
    x, y = _as_uint8(x).double(), _as_uint8(y).double()
    # Written out in float64: torchmetrics' PSNR takes log(data_range) in float32 (~1e-6 dB off).
    mse = (x - y).pow(2).flatten(1).mean(dim=1)  # (B,)
    return 10 * torch.log10(255.0**2 / mse)


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004): Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03.

    The SSIM map comes from torchmetrics, on the uint8-rounded images scaled to [0, 1] (data
    range 1), in float32 (float64 convolutions are ~10x slower on a CPU; the mean SSIM moves
    by ~1e-6). torchmetrics averages that map over the whole image, including a
    5-pixel border whose windows reach into its reflection padding; like Wang et al.'s
    reference code ('valid' filtering) and ``skimage.metrics.structural_similarity(
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``, we
    average only the interior, where the window lies inside the image (tested against skimage).

    Args:
        x, y: (B, 3, H, W) floats in [-1, 1] or uint8; H, W >= 11.

    Returns:
        (B,) float64.
    """
    if min(x.shape[-2:]) < 11:
        raise ValueError(f"SSIM needs images of at least 11 x 11 pixels, got {tuple(x.shape)}")
    # Lazy: importing torchmetrics takes seconds, and training imports this package.
    from openvision3.errors import require

    image_metrics = require("torchmetrics.functional.image", "eval", "SSIM")
    x, y = _as_uint8(x).float() / 255.0, _as_uint8(y).float() / 255.0
    _, full = image_metrics.structural_similarity_index_measure(
        x,
        y,
        gaussian_kernel=True,
        sigma=1.5,
        kernel_size=11,
        data_range=1.0,
        reduction="none",
        return_full_image=True,
    )  # full: (B, 3, H, W) SSIM map
    pad = 5  # (window - 1) / 2
    return full[..., pad:-pad, pad:-pad].flatten(1).double().mean(dim=1)


class ReconstructionEvaluator:
    """PSNR / SSIM [/ LPIPS] of ``model.reconstruct(images)`` over an iterable of batches.

    Besides the reduced means, :meth:`run` keeps one row per image (key, psnr, ssim[, lpips])
    for :meth:`write_csv`, and the ``keep`` best and worst images by PSNR for :meth:`save_grid`.

    Args:
        lpips: also report LPIPS, built by ``openvision3.losses.reconstruction`` from a
            local backbone file (nothing is downloaded); off by default.
        lpips_weights: path of that backbone file; "" = the torch hub cache.
        keep: how many best and how many worst images to hold for the grid.
        lpips_net: the LPIPS backbone, "vgg" (as in the training loss) or "alex".
        fid: an ``openvision3.evaluation.fid.ReconstructionFID`` fed the uint8 originals and
            reconstructions; adds ``rfid`` to the result.
    """

    def __init__(
        self,
        lpips: bool = False,
        lpips_weights: str = "",
        keep: int = 8,
        lpips_net: str = "vgg",
        fid=None,
    ):
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        if lpips_net not in ("vgg", "alex"):
            raise ValueError(f"lpips_net must be 'vgg' or 'alex', got {lpips_net!r}")
        self.lpips = lpips
        self.lpips_weights = lpips_weights
        self.lpips_net = lpips_net
        self.fid = fid
        self.keep = keep
        self._lpips_net: nn.Module | None = None
        self.rows: list[dict] = []
        # (psnr, key, original uint8 (3, H, W), reconstruction uint8 (3, H, W)), on CPU.
        self.best: list[tuple] = []
        self.worst: list[tuple] = []

    def _perceptual(self, device: torch.device) -> nn.Module:
        if self._lpips_net is None:
            # Lazy: LPIPS lives with the losses and needs a local backbone checkpoint.
            from openvision3.losses.reconstruction import build_lpips

            self._lpips_net = build_lpips(self.lpips_net, self.lpips_weights)
        return self._lpips_net.to(device)

    @staticmethod
    def _share(max_images: int | None) -> int | None:
        # This rank's even part of a global max_images (exact while every rank has its part).
        if max_images is None or not is_distributed():
            return max_images
        world = get_world_size()
        return max_images // world + int(get_rank() < max_images % world)

    def run(
        self, model: nn.Module, batches: Iterable[dict], max_images: int | None = None
    ) -> dict[str, float]:
        """Evaluate; call on every rank with that rank's batches.

        Args:
            model: has ``reconstruct(images (B, 3, H, W) in [-1, 1]) -> (B, 3, H, W)``.
            batches: dicts with ``images`` (B, 3, H, W) in [-1, 1] and optionally ``key``.
            max_images: at most this many images over all ranks: rank r stops after its even
                share (max_images // world, +1 for the first max_images % world ranks), so
                the total is exact unless a rank holds fewer images than its share; None = all.

        Returns:
            ``{"psnr", "ssim"[, "lpips"], "count"[, "rfid"]}``: over every image on every rank.
        """
        if max_images is not None and max_images < 1:
            raise ValueError(f"max_images must be >= 1 or None, got {max_images}")
        names = ("psnr", "ssim", "lpips") if self.lpips else ("psnr", "ssim")
        acc = MetricAccumulator(*names)
        self.rows, self.best, self.worst = [], [], []
        budget, device = self._share(max_images), model_device(model)
        seen = 0
        with evaluating(model):
            for batch in batches:
                if budget is not None and seen >= budget:
                    break
                images = batch["images"]
                b = images.shape[0] if budget is None else min(images.shape[0], budget - seen)
                images = images[:b].to(device)
                keys = list(batch.get("key", range(seen, seen + b)))[:b]
                seen += b
                original, recon = to_uint8(images), to_uint8(model.reconstruct(images))
                values = {"psnr": psnr_uint8(original, recon), "ssim": ssim(original, recon)}
                if self.lpips:
                    # On the quantised images, mapped back to [-1, 1] as LPIPS expects.
                    x, y = original.float() / 127.5 - 1, recon.float() / 127.5 - 1
                    values["lpips"] = self._perceptual(device)(y, x).reshape(b).double()
                for name in names:
                    acc.add(name, values[name])
                if self.fid is not None:
                    self.fid.update(original, recon)
                self._keep_rows(keys, values, original.cpu(), recon.cpu())
        acc.all_reduce()
        result = {**acc.compute(), "count": acc.count("psnr")}
        if self.fid is not None:
            result["rfid"] = self.fid.compute()
        return result

    def _keep_rows(self, keys, values, original, recon) -> None:
        for i, key in enumerate(keys):
            self.rows.append({"key": str(key), **{n: v[i].item() for n, v in values.items()}})
        if self.keep == 0:
            return
        items = [
            (values["psnr"][i].item(), str(k), original[i], recon[i]) for i, k in enumerate(keys)
        ]
        self.best = sorted(self.best + items, key=lambda t: -t[0])[: self.keep]
        self.worst = sorted(self.worst + items, key=lambda t: t[0])[: self.keep]

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write the per-image rows of the last :meth:`run` (all ranks) to ``path``.

        Call on every rank: the rows are gathered to rank 0, which writes the file.
        """
        shards = gather_objects_to_rank0(self.rows)
        if not is_main():
            return
        rows = [row for shard in shards for row in shard]
        fields = ["key", "psnr", "ssim"] + (["lpips"] if self.lpips else [])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    def save_grid(self, path: str | os.PathLike, n: int = 8) -> None:
        """Save a PNG grid of the ``n`` best then the ``n`` worst images by PSNR: each group is
        a row of originals over a row of reconstructions. Call on every rank; rank 0 writes."""
        from openvision3.data.transforms import write_grid

        shards = gather_objects_to_rank0((self.best, self.worst))
        if not is_main():
            return
        n = min(n, self.keep)
        best = sorted((t for s in shards for t in s[0]), key=lambda t: -t[0])[:n]
        worst = sorted((t for s in shards for t in s[1]), key=lambda t: t[0])[:n]
        if not best:
            raise ValueError("no images kept: call run() (with keep > 0) before save_grid()")
        tiles = []
        for group in (best, worst):
            tiles += [t[2] for t in group] + [t[3] for t in group]
        arr = torch.stack(tiles).permute(0, 2, 3, 1).numpy()  # (4n, H, W, 3) uint8
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # torchvision's make_grid layout: 2 black pixels around and between the images
        write_grid(arr, path, cols=len(best), pad=2, fill=0, border=True)
