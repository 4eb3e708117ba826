"""Caption decoder (the autoregressive half of the understanding branch).

A prefix-LM in the OpenVision 2 style (OpenVision 3 paper, section 2): one transformer over
``[proj(image tokens) ; caption tokens]`` where the image prefix attends bidirectionally to
itself and each caption token attends to the whole prefix and to the caption tokens up to
itself. Trained with teacher forcing; ``generate`` decodes greedily or with beam search.

Choices the paper leaves open:
- Image tokens get one learned *type* embedding and, by default (``image_pos="sincos"``), the
  2-D sin-cos table of their grid, added after the projection and before keep-ratio dropping
  (so a kept subset keeps its positions). The encoder's own input positions fade in the
  residual stream of an unnormalised last block; without them the decoder reads *what* is in
  the image much sooner than *where* (on the synthetic world: ``docs/demo-learning.md``).
  ``image_pos="none"`` gives a decoder that is blind to the token order.
- Image tokens are LayerNorm-ed before ``image_proj``: the unified tokens come without the
  encoder's final LayerNorm.
- ``lm_head`` is untied from ``token_embed`` and has no bias: tying shares one parameter between
  two FSDP units, and an untied head costs only V x D parameters.
- Generation keeps a KV cache: the image prefix and SOT run once, then one position per
  step, batched over B x beam (beam search reorders the cache by parent beam).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from openvision3.models.layers import KVCache, Transformer, init_weights
from openvision3.models.posemb import sincos_2d
from openvision3.tokenizer import EOT_ID, PAD_ID, SOT_ID, VOCAB_SIZE


@dataclass
class CaptionDecoderConfig:
    vocab_size: int = VOCAB_SIZE  # tokenizer vocabulary
    context_length: int = 128  # caption tokens, start token included
    width: int = 512  # transformer width
    depth: int = 12  # transformer blocks
    heads: int = 8  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / width
    image_width: int = 768  # width of the image tokens it reads (the encoder's)
    keep_ratio: float = 1.0  # fraction of image tokens kept, a random subset per sample (1 = all)
    sot_id: int = SOT_ID  # start-of-text token id
    eos_id: int = EOT_ID  # end-of-text token id
    pad_id: int = PAD_ID  # padding token id
    ln_eps: float = 1e-6  # LayerNorm epsilon
    pack_targets: bool = False  # project only non-pad targets to the vocabulary (CPU speed)
    image_pos: str = "sincos"  # 2-D sin-cos of the token grid on the image prefix | "none"

    def __post_init__(self):
        sizes = (self.vocab_size, self.width, self.depth, self.heads, self.image_width)
        if min(sizes) < 1:
            raise ValueError(f"caption sizes must be positive, got {self}")
        if self.context_length < 2:
            raise ValueError(f"caption.context_length must be >= 2, got {self.context_length}")
        if self.width % self.heads:
            raise ValueError(f"caption.width {self.width} not divisible by heads {self.heads}")
        if self.mlp_ratio <= 0:
            raise ValueError(f"caption.mlp_ratio must be > 0, got {self.mlp_ratio}")
        if not 0 < self.keep_ratio <= 1:
            raise ValueError(f"caption.keep_ratio must lie in (0, 1], got {self.keep_ratio}")
        ids = {"sot_id": self.sot_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        for name, value in ids.items():
            if not 0 <= value < self.vocab_size:
                raise ValueError(f"caption.{name} must lie in [0, {self.vocab_size}), got {value}")
        if len(set(ids.values())) != 3:
            raise ValueError(f"caption.sot_id, eos_id and pad_id must differ, got {ids}")
        if self.image_pos not in ("sincos", "none"):
            raise ValueError(f"caption.image_pos must be sincos or none, got {self.image_pos!r}")
        if self.image_pos == "sincos" and self.width % 4:
            raise ValueError(f"caption.image_pos=sincos needs width % 4 == 0, got {self.width}")


def prefix_lm_mask(n_image: int, n_text: int, device=None) -> torch.Tensor:
    """Bool (1, 1, S, S), S = N + L, True = may attend: every query sees all image keys;
    text queries also see text keys at or before themselves (image queries see no text)."""
    s = n_image + n_text
    q = torch.arange(s, device=device)[:, None]
    k = torch.arange(s, device=device)[None, :]
    return ((k < n_image) | (k <= q)).view(1, 1, s, s)


def square_grid(n: int) -> tuple[int, int]:
    """The (h, w) grid of ``n`` tokens when none is given: square, or an error."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} tokens are not a square grid: pass grid=(h, w)")
    return side, side


class CaptionDecoder(nn.Module):
    """``forward(image_tokens (B, N, Di), ids (B, L), grid) -> {logits (B, L-1, V), targets}``."""

    def __init__(self, cfg: CaptionDecoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.width
        self.image_norm = nn.LayerNorm(cfg.image_width, eps=cfg.ln_eps)
        self.image_proj = nn.Linear(cfg.image_width, d)
        self.image_type = nn.Parameter(torch.zeros(1, 1, d))
        self.token_embed = nn.Embedding(cfg.vocab_size, d)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, d))
        self.transformer = Transformer(d, cfg.depth, cfg.heads, cfg.mlp_ratio, cfg.ln_eps)
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_weights(self)
        nn.init.normal_(self.image_type, std=0.02)
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    # ------------------------------------------------------------------ pieces
    def keep_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, round(N * keep_ratio), D): a random subset per sample, in raster
        order, during training only (the OpenVision-2 speed-up); evaluation keeps all N."""
        b, n, _ = image_tokens.shape
        n_keep = max(1, round(n * self.cfg.keep_ratio))
        if not self.training or n_keep >= n:
            return image_tokens
        idx = torch.rand(b, n, device=image_tokens.device).argsort(dim=1)[:, :n_keep]
        idx = idx.sort(dim=1).values  # keep the raster order
        return image_tokens.gather(1, idx[..., None].expand(-1, -1, image_tokens.shape[-1]))

    def embed_image(
        self, image_tokens: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """(B, N, Di) tokens on an (h, w) grid (square when None) -> (B, N, D) decoder prefix
        (no token dropping here)."""
        x = self.image_proj(self.image_norm(image_tokens)) + self.image_type
        if self.cfg.image_pos == "sincos":
            grid = tuple(grid) if grid is not None else square_grid(x.shape[1])
            if grid[0] * grid[1] != x.shape[1]:
                raise ValueError(f"grid {grid} does not hold {x.shape[1]} image tokens")
            x = x + sincos_2d(self.cfg.width, *grid).to(x)  # (N, D), broadcast over B
        return x

    def text_hidden(
        self,
        prefix: torch.Tensor | None,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        """prefix (B, N, D), ids (B, L) -> final-LN hidden states of the text positions (B, L, D).

        Incremental decoding: with ``cache`` the first call passes the prefix (and caches it);
        later calls pass ``prefix=None``, one new id per row (B, 1) and its caption position
        ``start``; the new position attends to everything cached and to itself.
        """
        length = start + ids.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(
                f"caption length {length} exceeds context_length {self.cfg.context_length}"
            )
        x = self.token_embed(ids) + self.pos_embed[:, start:length]  # (B, L) -> (B, L, D)
        n = 0 if prefix is None else prefix.shape[1]
        if prefix is not None:
            x = torch.cat([prefix, x], dim=1)  # (B, N + L, D)
            mask = prefix_lm_mask(n, ids.shape[1], x.device)
        elif ids.shape[1] == 1:
            mask = None  # one new position: it may see every cached one
        else:
            raise ValueError("without a prefix, text_hidden takes one new position at a time")
        x = self.transformer(x, attn_mask=mask, cache=cache)
        return self.norm(x[:, n:])

    def forward(
        self, image_tokens: torch.Tensor, ids: torch.Tensor, grid: tuple[int, int] | None = None
    ) -> dict[str, torch.Tensor]:
        """Teacher forcing. image_tokens (B, N, Di) on an (h, w) grid (square when None),
        ids (B, L) rows ``[SOT, ..., EOT, PAD...]``.

        Returns ``logits`` (B, L-1, V), where logits[:, t] predicts ids[:, t+1], and ``targets``
        = ids[:, 1:] (B, L-1); padding stays ``pad_id`` for the loss to ignore. With
        ``cfg.pack_targets`` only the M non-pad targets are kept: (1, M, V) and (1, M).
        """
        if ids.shape[1] < 2:
            raise ValueError("caption ids need at least 2 tokens (SOT and one target)")
        prefix = self.keep_tokens(self.embed_image(image_tokens, grid))  # (B, N_keep, D)
        hidden = self.text_hidden(prefix, ids[:, :-1])  # (B, L-1, D)
        targets = ids[:, 1:]
        if self.cfg.pack_targets:
            # Only positions with a target reach the (large) vocabulary projection: same loss,
            # less compute when captions are padded; data-dependent shape (a host sync).
            keep = targets != self.cfg.pad_id
            hidden, targets = hidden[keep][None], targets[keep][None]  # (1, M, D), (1, M)
        return {"logits": self.lm_head(hidden), "targets": targets}

    def next_logits(
        self, prefix: torch.Tensor | None, ids: torch.Tensor, cache: KVCache | None = None
    ) -> torch.Tensor:
        """Logits (B, V) of the token after ``ids`` (B, t). Without a cache the whole sequence
        runs; with one, the first call (``prefix`` given) caches prefix + ids and later calls
        (``prefix=None``) run only the last id."""
        if cache is not None and prefix is None:
            hidden = self.text_hidden(None, ids[:, -1:], cache=cache, start=ids.shape[1] - 1)
        else:
            hidden = self.text_hidden(prefix, ids, cache=cache)
        return self.lm_head(hidden[:, -1]).float()

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(
        self,
        image_tokens: torch.Tensor,
        max_len: int | None = None,
        beam_size: int = 1,
        length_penalty: float = 1.0,
        grid: tuple[int, int] | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """image_tokens (B, N, Di) on an (h, w) grid -> caption ids LongTensor (B, T), T <= max_len.

        Rows start with SOT and end with EOS then PAD; a row that reaches ``max_len`` without
        EOS is returned as is. T is the longest row of the batch. ``beam_size == 1`` decodes
        greedily; otherwise beam search ranks hypotheses by sum log p / len**length_penalty,
        len counting the generated tokens (EOS included, SOT not). All image tokens are used.
        ``use_cache=False`` recomputes the whole sequence each step (same result, slower).
        """
        max_len = self.cfg.context_length if max_len is None else max_len
        if not 2 <= max_len <= self.cfg.context_length:
            raise ValueError(f"max_len must lie in [2, {self.cfg.context_length}], got {max_len}")
        if beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {beam_size}")
        prefix = self.embed_image(image_tokens, grid)  # (B, N, D)
        cache = KVCache(self.cfg.depth) if use_cache else None
        if beam_size == 1:
            return self._greedy(prefix, max_len, cache)
        return self._beam_search(prefix, max_len, beam_size, length_penalty, cache)

    def _step_logits(
        self, prefix: torch.Tensor, ids: torch.Tensor, cache: KVCache | None
    ) -> torch.Tensor:
        """next_logits with the prefix only on the first cached call."""
        first = cache is None or len(cache) == 0
        return self.next_logits(prefix if first else None, ids, cache)

    def _greedy(self, prefix: torch.Tensor, max_len: int, cache: KVCache | None) -> torch.Tensor:
        cfg = self.cfg
        ids = torch.full((prefix.shape[0], 1), cfg.sot_id, dtype=torch.long, device=prefix.device)
        done = torch.zeros(prefix.shape[0], dtype=torch.bool, device=prefix.device)
        for _ in range(max_len - 1):
            nxt = self._step_logits(prefix, ids, cache).argmax(dim=-1)  # (B,)
            nxt = torch.where(done, cfg.pad_id, nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == cfg.eos_id
            if done.all():
                break
        return ids

    def _beam_search(
        self,
        prefix: torch.Tensor,
        max_len: int,
        k: int,
        length_penalty: float,
        cache: KVCache | None,
    ) -> torch.Tensor:
        """Batched beam search over B x k rows. Each step takes the top 2k extensions of the k
        beams: an EOS among the top k finishes a hypothesis (the k best finished are kept), the
        best k non-EOS extensions continue. A sample stops once it holds k finished hypotheses
        and its best running beam, normalised at its current length, does not beat the worst of
        them (Hugging Face's default rule; exact when length_penalty == 0). At max_len the
        running beams are finished as they are."""
        cfg, device = self.cfg, prefix.device
        b = prefix.shape[0]
        prefix = prefix.repeat_interleave(k, dim=0)  # (B*k, N, D)
        seqs = torch.full((b * k, 1), cfg.sot_id, dtype=torch.long, device=device)
        scores = torch.full((b, k), float("-inf"), device=device)  # sum log p per beam (B, k)
        scores[:, 0] = 0.0  # all beams start identical: expand only the first
        hyps = [_Finished(k, length_penalty) for _ in range(b)]
        done = [False] * b
        rows = torch.arange(b, device=device)[:, None]
        for step in range(1, max_len):  # step = generated tokens after this step
            logp = F.log_softmax(self._step_logits(prefix, seqs, cache), dim=-1)  # (B*k, V)
            v = logp.shape[-1]
            cand = (scores.view(-1, 1) + logp).view(b, k * v)
            top_s, top_i = cand.topk(min(2 * k, k * v), dim=1)  # (B, 2k)
            beam, tok = top_i // v, top_i % v
            is_eos = tok == cfg.eos_id
            flat_seqs = seqs.view(b, k, -1)
            for i, r in torch.nonzero(is_eos[:, :k]).tolist():
                if not done[i]:
                    seq = flat_seqs[i, beam[i, r]].tolist() + [cfg.eos_id]
                    hyps[i].add(float(top_s[i, r]), seq)
            # The best k non-EOS extensions continue (at most k of the 2k are EOS).
            n_cand = top_i.shape[1]
            pick = (is_eos.long() * n_cand + torch.arange(n_cand, device=device)).argsort(dim=1)
            pick = pick[:, :k]  # (B, k)
            scores = top_s[rows, pick]
            parents = (rows * k + beam[rows, pick]).view(-1)  # (B*k,) rows of seqs
            seqs = torch.cat([seqs[parents], tok[rows, pick].view(-1, 1)], dim=1)
            if cache is not None:
                cache.reorder(parents)
            best_running = scores.amax(dim=1).tolist()
            done = [d or h.closed(s, step) for d, h, s in zip(done, hyps, best_running)]
            if all(done):
                break
        flat_seqs = seqs.view(b, k, -1)
        for i in range(b):
            if not done[i]:  # max_len reached: running beams are finished as they are
                for j, s in enumerate(scores[i].tolist()):
                    hyps[i].add(s, flat_seqs[i, j].tolist())
        best = [h.best() for h in hyps]
        out = torch.full((b, max(map(len, best))), cfg.pad_id, dtype=torch.long, device=device)
        for i, seq in enumerate(best):
            out[i, : len(seq)] = torch.tensor(seq, device=device)
        return out


class _Finished:
    """The k best finished hypotheses of one sample, ranked by sum log p / len**length_penalty
    with len the generated tokens (SOT excluded)."""

    def __init__(self, k: int, length_penalty: float):
        self.k, self.length_penalty = k, length_penalty
        self.items: list[tuple[float, list[int]]] = []

    def normalise(self, score: float, length: int) -> float:
        return score / length**self.length_penalty

    def add(self, score: float, seq: list[int]) -> None:
        if score == float("-inf"):  # an unused beam (fewer than k live candidates)
            return
        self.items.append((self.normalise(score, len(seq) - 1), seq))
        self.items = sorted(self.items, key=lambda h: h[0], reverse=True)[: self.k]

    def closed(self, best_running: float, length: int) -> bool:
        """True once k are finished and the best running beam cannot enter the list."""
        if len(self.items) < self.k:
            return False
        return self.normalise(best_running, length) <= self.items[-1][0]

    def best(self) -> list[int]:
        return self.items[0][1]
