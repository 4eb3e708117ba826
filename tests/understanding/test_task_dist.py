"""2-process FSDP2 over the language model's decoder layers gives the loss and gradients of one
process on the same global stage-2 batch (fp32, gloo), through the task's own step."""

import contextlib
import os

import pytest
import torch
import torch.multiprocessing as mp

from tests.dist_utils import free_port, worker_env

pytest.importorskip("transformers")

from openvision3.configs import get_preset  # noqa: E402
from openvision3.distributed.parallelize import is_sharded, parallelize  # noqa: E402
from openvision3.train.checkpoint import clean_key  # noqa: E402


def _setup(world=1, rank=0):
    cfg = get_preset("llava15_ov3_b2_stage2_smoke")
    task = cfg.build_task()
    model = task.build_model()
    model.model.vision_tower.requires_grad_(False)
    batch = next(iter(task.build_loader(cfg.train.stages[0], 4, 0, 1)))
    if world > 1:
        batch = {k: v.chunk(world)[rank] for k, v in batch.items()}
    return task, model, batch


def _grads(model):
    out = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            out[clean_key(name)] = g.detach().clone()
    return out


def _worker(rank, world, port, out):
    worker_env(rank, world, port)
    torch.distributed.init_process_group("gloo")
    task, model, half = _setup(world, rank)
    train_model = parallelize(model, world, torch.device("cpu"), parallel="fsdp")
    assert is_sharded(model)
    terms = task.forward_backward(train_model, model, half, 1, contextlib.nullcontext)
    loss = terms["loss"].clone()
    torch.distributed.all_reduce(loss)
    grads = _grads(model)
    if rank == 0:
        torch.save({"loss": loss, "grads": grads}, os.path.join(out, "r.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.dist
def test_fsdp2_stage2_step_matches_one_process(tmp_path):
    task, model, batch = _setup()
    ref_loss = task.forward_backward(model, model, batch, 1, contextlib.nullcontext)["loss"]
    ref = _grads(model)
    mp.spawn(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt", weights_only=True)
    torch.testing.assert_close(got["loss"], ref_loss, rtol=1e-5, atol=1e-6)
    assert got["grads"].keys() == ref.keys()
    for k, g in ref.items():
        torch.testing.assert_close(got["grads"][k], g, rtol=1e-4, atol=1e-6, msg=k)
