"""From a study and one (arm, seed) to the run config the training engine takes.

Everything but the arm's own difference comes from the base experiment, so every arm sees the
same samples in the same order (``train.seed`` = the seed), for the same steps, batch and LR
schedule, and is evaluated on the same held-out images at the same steps.
"""

from __future__ import annotations

import copy
import dataclasses

from openvision3.models.presets import pixel_vit
from openvision3.study.config import ArmConfig, StudyConfig
from openvision3.study.task import StudyRunConfig

# The encoder's trunk: everything but the pooling norm and projection (``encoder.norm``,
# ``encoder.head``), which belong to the contrastive head and so train as its probe.
TRUNK = ("encoder.patch_embed", "encoder.cls_token", "encoder.blocks")


def run_dir(study: StudyConfig, arm: str, seed: int) -> str:
    return f"{study.run_dir}/{arm}/seed{seed}"


def arm_run_config(
    study: StudyConfig, arm: ArmConfig, seed: int, realism: str = ""
) -> StudyRunConfig:
    """The run of ``arm`` with ``seed`` (initial weights, decoder noise and data order).

    Probes: the branches the arm does not train read the tokens through ``stop_gradient``,
    with the base's loss weights, so a head trains the same way as probe or not. An arm that
    trains no branch also freezes the encoder trunk (frozen-init). The pixel arm swaps the
    model for its pixel-ViT twin and drops the latent L1 term (its "latents" are the pixels:
    the term would repeat the pixel L1).
    """
    base = copy.deepcopy(study.base)
    model = pixel_vit(base.model) if arm.pixels else base.model
    objective = dataclasses.replace(
        base.objective,
        stop_gradient=arm.probes,
        latent_weight=0.0 if arm.pixels else base.objective.latent_weight,
    )
    freeze = () if arm.trains else TRUNK
    stages = [dataclasses.replace(s, freeze=tuple(s.freeze) + freeze) for s in base.train.stages]
    train = dataclasses.replace(base.train, stages=stages, seed=seed, eval_every=study.eval.every)
    train.resume = "auto"
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    fields.update(
        name=f"study-{study.name}-{arm.name}-seed{seed}",
        run_dir=run_dir(study, arm.name, seed),
        model=model,
        objective=objective,
        train=train,
    )
    return StudyRunConfig(**fields, arm=arm.name, probe_eval=study.eval, realism=realism)
