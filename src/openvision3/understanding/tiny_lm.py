"""A tiny language model built offline: a random-init Llama and a word-level tokenizer over a
small vocabulary (the synthetic world's words), for the demo, the smoke presets and
``ov3 vlm build --llm tiny``."""

from __future__ import annotations

from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from openvision3.understanding.templates import IMAGE


def tiny_llama(vocab_size: int, hidden: int = 128, layers: int = 3, heads: int = 4):
    """A random Llama (0.81M parameters at 128 x 3 with a 64-word vocabulary)."""
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=hidden,
            intermediate_size=4 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=heads,
            max_position_embeddings=1024,
            bos_token_id=2,
            eos_token_id=3,
            pad_token_id=1,
        )
    )


def word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A word-level tokenizer (``tokenizers``' ``WordLevel``) over ``words`` plus the special
    tokens ``<unk> <pad> <s> </s> <image>``; splits on whitespace and punctuation, lower case.
    Small vocabularies keep a tiny language model's embedding and head small."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["<unk>", "<pad>", "<s>", "</s>", IMAGE]
    vocab = {w: i for i, w in enumerate(dict.fromkeys(specials + list(words)))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    # The tokenizer adds its BOS itself, as a Llama tokenizer does (the processor's call).
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=[IMAGE],
    )
    return fast
