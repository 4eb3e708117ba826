import pytest
import torch
import torch.nn.functional as F

from openvision3.losses import ContrastiveLoss, Objective, ObjectiveConfig, caption_loss

B, E, L, V = 4, 8, 5, 11


def _output(text_2: bool = False) -> dict[str, torch.Tensor]:
    out = {
        "images": torch.rand(B, 3, 16, 16) * 2 - 1,
        "images_hat": (torch.rand(B, 3, 16, 16) * 2 - 1).requires_grad_(True),
        "latents": torch.randn(B, 4, 2, 2),
        "latents_hat": torch.randn(B, 4, 2, 2, requires_grad=True),
        "image_embeds": F.normalize(torch.randn(B, E), dim=-1).requires_grad_(True),
        "text_embeds": F.normalize(torch.randn(B, E), dim=-1).requires_grad_(True),
        "logit_scale": torch.tensor([1 / 0.07], requires_grad=True),
        "caption_logits": torch.randn(B, L, V, requires_grad=True),
        "caption_targets": torch.randint(1, V, (B, L)),
    }
    out["caption_targets"][:, 3:] = 0
    if text_2:
        out["text_embeds_2"] = F.normalize(torch.randn(B, E), dim=-1)
    return out


def test_total_is_hand_combined():
    cfg = ObjectiveConfig(rec_weight=0.5, caption_weight=0.7, contrastive_weight=1.3)
    out = _output(text_2=True)
    total, terms = Objective(cfg)(out)

    pixel = (out["images_hat"] - out["images"]).abs().mean()
    latent = (out["latents_hat"] - out["latents"]).abs().mean()
    rec = pixel + 0.4 * latent
    con = ContrastiveLoss()(
        out["image_embeds"], out["text_embeds"], out["logit_scale"], out["text_embeds_2"]
    )
    cap = caption_loss(out["caption_logits"], out["caption_targets"])
    und = 0.7 * cap + 1.3 * con
    torch.testing.assert_close(total, 0.5 * rec + 1.0 * und)

    expected = {
        "loss": total, "rec": rec, "pixel_l1": pixel, "latent_l1": latent, "und": und,
        "contrastive": con, "caption": cap, "logit_scale": torch.tensor(1 / 0.07),
    }  # fmt: skip
    assert set(terms) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(terms[key], value.detach(), msg=key)
        assert terms[key].shape == () and not terms[key].requires_grad

    total.backward()
    for key in ("images_hat", "latents_hat", "image_embeds", "text_embeds", "logit_scale"):
        assert out[key].grad is not None and out[key].grad.abs().sum() > 0, key
    assert Objective(cfg).state_dict() == {}


def test_logit_scale_term_is_clamped():
    out = _output()
    out["logit_scale"] = torch.tensor([300.0])
    _, terms = Objective(ObjectiveConfig(rec_weight=0.0, caption_weight=0.0))(out)
    assert terms["logit_scale"].item() == 100.0


REC_KEYS = ("images", "images_hat", "latents", "latents_hat")
CON_KEYS = ("image_embeds", "text_embeds", "logit_scale")
CAP_KEYS = ("caption_logits", "caption_targets")


@pytest.mark.parametrize(
    "weights, needs, missing",
    [
        (dict(rec_weight=0.0), (False, True, True), REC_KEYS),
        (dict(und_weight=0.0), (True, False, False), CON_KEYS + CAP_KEYS),
        (dict(caption_weight=0.0), (True, True, False), CAP_KEYS),
        (dict(contrastive_weight=0.0), (True, False, True), CON_KEYS),
    ],
)
def test_zero_weights_skip_branches(weights, needs, missing):
    cfg = ObjectiveConfig(**weights)
    assert (cfg.needs_reconstruction, cfg.needs_contrastive, cfg.needs_caption) == needs
    full = _output()
    total_full, terms_full = Objective(cfg)(full)
    # The skipped branch's inputs are not required ...
    out = {k: v for k, v in full.items() if k not in missing}
    total, terms = Objective(cfg)(out)
    torch.testing.assert_close(total, total_full)
    # ... and its terms are neither computed nor reported.
    skipped = {
        "rec": not needs[0], "pixel_l1": not needs[0], "contrastive": not needs[1],
        "logit_scale": not needs[1], "caption": not needs[2], "und": not (needs[1] or needs[2]),
    }  # fmt: skip
    for key, absent in skipped.items():
        assert (key not in terms) == absent, key
    assert set(terms) == set(terms_full)


def test_missing_key_message():
    out = _output()
    del out["caption_targets"]
    with pytest.raises(KeyError, match="caption_targets"):
        Objective(ObjectiveConfig())(out)


@pytest.mark.parametrize(
    "bad",
    [
        dict(rec_weight=-0.1),
        dict(contrastive_weight=float("inf")),
        dict(latent_weight=-1.0),
        dict(lpips_net="nope"),
        dict(rec_weight=0.0, und_weight=0.0),
        dict(rec_weight=0.0, caption_weight=0.0, contrastive_weight=0.0),
    ],
)
def test_config_validation(bad):
    with pytest.raises(ValueError):
        ObjectiveConfig(**bad)
