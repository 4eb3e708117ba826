"""2 ranks holding an UNEVEN share of 7 images (5/2, and 7/0) give the 1-rank rFID (feature
sums all-reduced), multi-caption retrieval, per-class zero-shot and linear-probe numbers."""

import json

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from openvision3.evaluation import ReconstructionEvaluator, ZeroShotEvaluator
from openvision3.evaluation.fid import ReconstructionFID
from openvision3.evaluation.linear_probe import LinearProbeConfig, LinearProbeEvaluator
from openvision3.evaluation.retrieval import MultiCaptionRetrievalEvaluator
from tests.dist_utils import free_port
from tests.evaluation._eval_fakes import (
    ClassTokenizer,
    NoisyReconstructor,
    TableModel,
    index_images,
    textured_images,
)
from tests.evaluation._fid_fakes import PooledFeatures

N, K, E = 7, 3, 5
TEMPLATES = ["a {}"]
SPLITS = {"5-2": [range(0, 5), range(5, 7)], "7-0": [range(0, 7), range(0)]}


class _IdTokenizer:
    def __call__(self, texts):
        return torch.tensor([[int(t[1:])] for t in texts])


def _batches(indices, size=2):
    pixels, labels = textured_images(N, size=16), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    owner = [[2 * i, 2 * i + 1] if i % 2 else [2 * i] for i in range(N)]  # 1 or 2 captions
    idx = torch.tensor(list(indices), dtype=torch.long)
    for i in range(0, len(idx), size):
        rows = idx[i : i + size]
        yield {
            "images": index_images(rows),
            "pixels": pixels[rows],
            "index": rows,
            "label": labels[rows],
            "captions": [[f"t{j}" for j in owner[r]] for r in rows.tolist()],
        }


def _evaluate(indices, cache):
    g = torch.Generator().manual_seed(1)
    images, texts = torch.randn(N, E, generator=g), torch.randn(2 * N, E, generator=g)
    model = TableModel(images, texts)
    fid = ReconstructionFID(PooledFeatures(), cache)
    pixels = ({"images": b["pixels"]} for b in _batches(indices))
    rec = ReconstructionEvaluator(keep=0, fid=fid).run(NoisyReconstructor(), pixels)
    zs = ZeroShotEvaluator(["c0", "c1", "c2"], TEMPLATES, (1, 2), ClassTokenizer(TEMPLATES))
    classes = TableModel(images, torch.randn(K, E, generator=g))
    zero_shot = zs.run(classes, _batches(indices))
    retrieval = MultiCaptionRetrievalEvaluator(_IdTokenizer(), (1, 2, 5)).run(
        model, _batches(indices)
    )
    probe = LinearProbeEvaluator(K, LinearProbeConfig(max_iter=20)).run(
        model, _batches(indices), _batches(indices)
    )
    return {
        "rec": rec,
        "zero_shot": zero_shot,
        "per_class": zs.per_class,
        "retrieval": retrieval,
        "probe": probe,
    }


def _worker(rank, world, port, tmp_dir):
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        for tag, split in SPLITS.items():
            out = _evaluate(split[rank], f"{tmp_dir}/ref-{tag}.npz")
            with open(f"{tmp_dir}/rank{rank}_{tag}.json", "w") as f:
                json.dump(out, f)
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_uneven_ranks_match_one_rank(tmp_path):
    single = _evaluate(range(N), str(tmp_path / "ref-single.npz"))
    assert single["rec"]["count"] == N and single["rec"]["rfid"] > 0
    assert single["retrieval"]["captions"] == 10 and 0 < single["retrieval"]["t2i_r1"] < 1
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for tag in SPLITS:
        assert (tmp_path / f"ref-{tag}.npz").is_file()  # written once, by rank 0
        for rank in (0, 1):
            out = json.loads((tmp_path / f"rank{rank}_{tag}.json").read_text())
            for name in ("rec", "zero_shot", "per_class", "retrieval"):
                assert out[name] == pytest.approx(single[name], rel=1e-9, abs=1e-12), (tag, name)
            # Every rank fits the probe on the same gathered features: the same numbers.
            assert out["probe"] == single["probe"], tag
