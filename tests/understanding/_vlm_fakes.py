"""Tiny OpenVision 3 LLaVAs for tests: the random ``ov3-mu`` encoder with a tiny random VAE, a
2-layer random Llama, at 32 px (4 image tokens); with the synthetic world's word-level
tokenizer (``tiny``) or a Llama-style SentencePiece tokenizer (``sentencepiece_tokenizer``)."""

from __future__ import annotations

from openvision3.understanding.tiny import mu_openvision3, tiny_vlm

SENTENCES = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: what colour is the large object? ASSISTANT: red",
    "is there a blue object? yes. is there a green object? no.",
    "where is the large object? top left. how many objects are there? two",
    "a red circle and a blue square on a grey background",
]


def tiny(template: str = "vicuna_v1_short", image_size: int = 32):
    """(vlm, processor, ov3)."""
    ov3 = mu_openvision3()
    vlm, processor = tiny_vlm(ov3, image_size=image_size, template=template)
    return vlm, processor, ov3


def sentencepiece_tokenizer():
    """A Llama-style tokenizer as transformers 5 loads Vicuna's (``legacy=False``): a BPE
    trained here on a few sentences, Metaspace pre-tokenizer with ``prepend_scheme="first"``,
    byte fallback over the 256 ``<0xXX>`` pieces, ``<unk> <s> </s>``, the BOS added by the
    post-processor. Trained with SentencePiece's whitespace split (no piece spans two words)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=specials + byte_pieces, show_progress=False
    )
    sp = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    sp.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    sp.train_from_iterator(SENTENCES * 4, trainer)
    model = json.loads(sp.to_str())["model"]
    tok = Tokenizer(
        models.BPE(
            vocab=model["vocab"],
            merges=[tuple(m) for m in model["merges"]],
            unk_token="<unk>",
            byte_fallback=True,
            fuse_unk=True,
        )
    )
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    bos = model["vocab"]["<s>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_sentencepiece_vlm(template: str = "vicuna_v1", image_size: int = 32, seed: int = 0):
    """(vlm, processor): ``tiny_vlm``'s tower and Llama over ``sentencepiece_tokenizer``."""
    import torch

    from openvision3.understanding.assemble import assemble
    from openvision3.understanding.tiny_lm import tiny_llama
    from openvision3.understanding.tower import OpenVision3VisionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = sentencepiece_tokenizer()
        tower = OpenVision3VisionModel.from_openvision3(mu_openvision3(), image_size)
        lm = tiny_llama(len(tok) + 1, 32, 2, 4)  # + <image>
        lm.config.bos_token_id, lm.config.eos_token_id = tok.bos_token_id, tok.eos_token_id
        return assemble(tower, lm, tok, template=template)
