"""Text encoder: CLIP-like causal transformer + projection into the joint space.

Provides the three things SEEM needs from text:
- `vocabulary_embeddings(names)`: one unit vector per class name, the mean of the name in
  81 prompt templates (CLIP's 80 ImageNet templates + "{}."), plus "background" last;
- `phrase_tokens(texts)`: per-token features (grounding tokens) and the sentence feature
  of referring phrases;
- `logit_scale`, the learned temperature.
Parameter names follow the official checkpoints (`sem_seg_head.predictor.lang_encoder.*`).

Speed: the transformer is causal and the sentence feature is read at the first end
token, so nothing after it can change the result: sequences are cut right after their
end token and batched by length instead of being padded to 77. For the same reason the
templates' common prefixes ("<sot> a photo of a") are run once and their keys/values
reused for every class name.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .tokenizer import ClipTokenizer, get_tokenizer
from .transformer import MultiheadAttention

# CLIP's ImageNet prompt templates plus the bare "{}." used by the reference (data, 81 entries).
PROMPT_TEMPLATES: tuple[str, ...] = (
    "{}.", "a photo of a {}.", "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.", "a tattoo of a {}.",
    "the embroidered {}.", "a photo of a hard to see {}.", "a bright photo of a {}.",
    "a photo of a clean {}.", "a photo of a dirty {}.", "a dark photo of the {}.", "a drawing of a {}.",
    "a photo of my {}.", "the plastic {}.", "a photo of the cool {}.", "a close-up photo of a {}.",
    "a black and white photo of the {}.", "a painting of the {}.", "a painting of a {}.",
    "a pixelated photo of the {}.", "a sculpture of the {}.", "a bright photo of the {}.",
    "a cropped photo of a {}.", "a plastic {}.", "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.", "a blurry photo of the {}.", "a photo of the {}.",
    "a good photo of the {}.", "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.",
    "a doodle of a {}.", "a close-up photo of the {}.", "the origami {}.", "the {} in a video game.",
    "a sketch of a {}.", "a doodle of the {}.", "a origami {}.", "a low resolution photo of a {}.",
    "the toy {}.", "a rendition of the {}.", "a photo of the clean {}.", "a photo of a large {}.",
    "a rendition of a {}.", "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.", "a photo of the small {}.",
    "a photo of the weird {}.", "the cartoon {}.", "art of the {}.", "a drawing of the {}.",
    "a photo of the large {}.", "a black and white photo of a {}.", "the plushie {}.",
    "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
)
BACKGROUND = "background"


def clean_class_name(name: str) -> str:
    """COCO-style suffixes are dropped before templating, as the reference does."""
    return name.replace("-other", "").replace("-merged", "").replace("-stuff", "")


def layer_norm_fp32(x: torch.Tensor, norm: nn.LayerNorm) -> torch.Tensor:
    """TF-style LayerNorm of the reference's text encoder: statistics in float32."""
    y = F.layer_norm(x.float(), norm.normalized_shape, None, None, norm.eps).to(x.dtype)
    return y * norm.weight + norm.bias


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, width * 4)),
            ("gelu", QuickGELU()),
            ("c_proj", nn.Linear(width * 4, width)),
        ]))
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, causal_mask: torch.Tensor) -> torch.Tensor:
        y = layer_norm_fp32(x, self.ln_1)
        x = x + self.attn(y, y, y, causal_mask)
        return x + self.mlp(layer_norm_fp32(x, self.ln_2))

    def forward_cached(self, x: torch.Tensor, past_k: torch.Tensor | None, past_v: torch.Tensor | None,
                       mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Causal step over new positions x (B x L x W) given earlier positions' keys/values
        (B x heads x P x d). mask: B x 1 x L x (P + L), True = blocked. Returns (x, k, v)."""
        attn = self.attn
        y = layer_norm_fp32(x, self.ln_1)
        q, k, v = F.linear(y, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = attn._split(q) * attn.head_dim ** -0.5, attn._split(k), attn._split(v)
        keys = k if past_k is None else torch.cat([past_k, k], dim=2)
        values = v if past_v is None else torch.cat([past_v, v], dim=2)
        probs = torch.matmul(q, keys.transpose(-2, -1)).masked_fill(mask, float("-inf")).softmax(-1)
        out = torch.matmul(probs, values).transpose(1, 2).reshape(x.shape)
        x = x + attn.out_proj(out)
        return x + self.mlp(layer_norm_fp32(x, self.ln_2)), k, v


class TextTransformer(nn.Module):
    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(cfg.width, cfg.heads) for _ in range(cfg.layers))
        self.ln_final = nn.LayerNorm(cfg.width, eps=1e-12)
        nn.init.trunc_normal_(self.positional_embedding, std=0.02)
        nn.init.trunc_normal_(self.token_embedding.weight, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids N x L (L <= context) -> hidden states after ln_final, N x L x width."""
        length = input_ids.shape[1]
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        causal = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)[None, None]
        for block in self.resblocks:
            x = block(x, causal)
        return layer_norm_fp32(x, self.ln_final)

    def forward_cached(self, input_ids: torch.Tensor, start: torch.Tensor,
                       past: list[tuple[torch.Tensor, torch.Tensor]] | None, past_padding: torch.Tensor | None,
                       ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """Continues sequences whose first `start[b]` positions were already run.

        input_ids B x L: the new tokens; past: per layer (keys, values) B x heads x P x d of the
        earlier positions, `past_padding` B x P marking unused past slots. Returns hidden
        states after ln_final (B x L x width) and the new positions' keys/values per layer.
        """
        b, length = input_ids.shape
        device = input_ids.device
        positions = start[:, None] + torch.arange(length, device=device)[None]
        x = self.token_embedding(input_ids) + self.positional_embedding[positions]
        causal = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)[None, None].expand(b, 1, -1, -1)
        if past is not None:
            mask = torch.cat([past_padding[:, None, None, :].expand(-1, 1, length, -1), causal], dim=-1)
        else:
            mask = causal
        new_kv = []
        for i, block in enumerate(self.resblocks):
            pk, pv = past[i] if past is not None else (None, None)
            x, k, v = block.forward_cached(x, pk, pv, mask)
            new_kv.append((k, v))
        return layer_norm_fp32(x, self.ln_final), new_kv


class LanguageEncoder(nn.Module):
    """Text transformer + `lang_proj` + `logit_scale`, with caches for inference."""

    def __init__(self, cfg: TextConfig, dim_proj: int, tokenizer: ClipTokenizer | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer or get_tokenizer()
        self.lang_encoder = TextTransformer(cfg)
        self.lang_proj = nn.Parameter(torch.empty(cfg.width, dim_proj))
        nn.init.trunc_normal_(self.lang_proj, std=0.02)
        self.logit_scale = nn.Parameter(torch.ones([]))
        self._class_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._phrase_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._prefix_cache: tuple | None = None
        self.cache_size = 4096
        # Weights changing (loading, training) invalidates the caches.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    def clear_cache(self) -> None:
        self._class_cache.clear()
        self._phrase_cache.clear()
        self._prefix_cache = None

    def train(self, mode: bool = True) -> "LanguageEncoder":
        self.clear_cache()
        return super().train(mode)

    # ------------------------------------------------------------------ core
    def _encode_ragged(self, sequences: list[list[int]], batch_tokens: int = 16384) -> list[torch.Tensor]:
        """Projected hidden states (L_i x D) of token sequences of any lengths.

        Sequences are grouped by length so no position is computed twice; the causal mask
        makes each row's states independent of what follows it.
        """
        device = self.lang_proj.device
        out: list[torch.Tensor | None] = [None] * len(sequences)
        by_length: dict[int, list[int]] = {}
        for i, seq in enumerate(sequences):
            by_length.setdefault(len(seq), []).append(i)
        for length, rows in sorted(by_length.items()):
            step = max(1, batch_tokens // length)
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                ids = torch.tensor([sequences[i] for i in chunk], dtype=torch.long, device=device)
                hidden = self.lang_encoder(ids) @ self.lang_proj
                for j, i in enumerate(chunk):
                    out[i] = hidden[j]
        return out  # type: ignore[return-value]

    def _sequence(self, text: str) -> list[int]:
        return self.tokenizer.tokenize_ids(text, self.cfg.context_length)

    # ------------------------------------------------------------------ vocabulary
    def encode_sentences(self, texts: list[str], normalize: bool = True) -> torch.Tensor:
        """Sentence features (at the first end token) of `texts`, N x D."""
        states = self._encode_ragged([self._sequence(t) for t in texts])
        feats = torch.stack([s[-1] for s in states])
        if normalize:
            feats = feats / (feats.norm(dim=-1, keepdim=True) + 1e-7)
        return feats

    def class_embedding(self, name: str) -> torch.Tensor:
        """Mean over the 81 templates of the normalised sentence features, renormalised."""
        return self.class_embeddings([name])[0]

    def class_embeddings(self, names: list[str]) -> torch.Tensor:
        """One unit vector per name (cached by name at inference)."""
        use_cache = not torch.is_grad_enabled()
        missing = [n for n in dict.fromkeys(names) if not (use_cache and n in self._class_cache)]
        fresh: dict[str, torch.Tensor] = {}
        if missing:
            if torch.is_grad_enabled():
                prompts = [t.format(clean_class_name(n)) for n in missing for t in PROMPT_TEMPLATES]
                feats = self.encode_sentences(prompts)
            else:
                feats = self._template_sentences(missing)
            feats = feats.view(len(missing), len(PROMPT_TEMPLATES), -1)
            means = feats.mean(dim=1)
            fresh = dict(zip(missing, means / means.norm(dim=-1, keepdim=True)))
        result = []
        for n in names:
            if n in fresh:
                emb = fresh[n]
                if use_cache:
                    self._class_cache[n] = emb.detach()
                    while len(self._class_cache) > self.cache_size:
                        self._class_cache.popitem(last=False)
            else:
                emb = self._class_cache[n]
                self._class_cache.move_to_end(n)
            result.append(emb)
        return torch.stack(result)

    def _template_prefixes(self) -> tuple[list[list[int]], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
        """Token ids, per-layer keys/values and padding of every template's prefix
        ("<sot> a photo of a"), computed once: the prefix is the same for every class name
        and, the encoder being causal, its states do not depend on what follows."""
        if self._prefix_cache is None:
            prefixes = [self._sequence(t.split("{}")[0].strip())[:-1] for t in PROMPT_TEMPLATES]  # drop the EOT
            length = max(len(p) for p in prefixes)
            ids = torch.full((len(prefixes), length), self.tokenizer.eot_token_id, dtype=torch.long)
            for i, p in enumerate(prefixes):
                ids[i, : len(p)] = torch.tensor(p)
            ids = ids.to(self.lang_proj.device)
            _, kv = self.lang_encoder.forward_cached(ids, torch.zeros(len(prefixes), dtype=torch.long, device=ids.device),
                                                     None, None)
            lengths = torch.tensor([len(p) for p in prefixes], device=ids.device)
            padding = torch.arange(length, device=ids.device)[None] >= lengths[:, None]
            self._prefix_cache = (prefixes, kv, padding)
        return self._prefix_cache

    def _template_sentences(self, names: list[str]) -> torch.Tensor:
        """Normalised sentence features of every (name, template) pair, name-major.

        Only the part after each template's cached prefix is run; pairs whose tokens do not
        split at the prefix (or exceed the context) are run whole.
        """
        prefixes, kv, padding = self._template_prefixes()
        pairs: list[tuple[int, int, list[int]]] = []  # (row, template, remaining ids)
        whole: list[tuple[int, list[int]]] = []
        for n_i, name in enumerate(names):
            for t_i, template in enumerate(PROMPT_TEMPLATES):
                row = n_i * len(PROMPT_TEMPLATES) + t_i
                ids = self._sequence(template.format(clean_class_name(name)))
                prefix = prefixes[t_i]
                if len(ids) < self.cfg.context_length and ids[: len(prefix)] == prefix and len(ids) > len(prefix):
                    pairs.append((row, t_i, ids[len(prefix):]))
                else:
                    whole.append((row, ids))
        out = torch.empty((len(names) * len(PROMPT_TEMPLATES), self.lang_proj.shape[1]), device=self.lang_proj.device)
        by_length: dict[int, list[tuple[int, int, list[int]]]] = {}
        for pair in pairs:
            by_length.setdefault(len(pair[2]), []).append(pair)
        for length, group in by_length.items():
            for start in range(0, len(group), max(1, 8192 // length)):
                chunk = group[start:start + max(1, 8192 // length)]
                rows = torch.tensor([r for r, _, _ in chunk], device=out.device)
                tmpl = torch.tensor([t for _, t, _ in chunk], device=out.device)
                ids = torch.tensor([ids for _, _, ids in chunk], device=out.device)
                starts = (~padding[tmpl]).sum(1)
                past = [(k[tmpl], v[tmpl]) for k, v in kv]
                hidden, _ = self.lang_encoder.forward_cached(ids, starts, past, padding[tmpl])
                out[rows] = hidden[:, -1] @ self.lang_proj
        if whole:
            states = self._encode_ragged([ids for _, ids in whole])
            out[torch.tensor([r for r, _ in whole], device=out.device)] = torch.stack([s[-1] for s in states])
        return out / (out.norm(dim=-1, keepdim=True) + 1e-7)

    def vocabulary_embeddings(self, names: list[str] | tuple[str, ...]) -> torch.Tensor:
        """(K + 1) x D: the class names and then "background" (the no-object column)."""
        return self.class_embeddings(list(names) + [BACKGROUND])

    # ------------------------------------------------------------------ phrases
    def phrase_tokens(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(token features T x D for SOT..EOT, sentence feature D); not normalised."""
        use_cache = not torch.is_grad_enabled()
        if use_cache and text in self._phrase_cache:
            self._phrase_cache.move_to_end(text)
            return self._phrase_cache[text]
        states = self._encode_ragged([self._sequence(text)])[0]
        result = (states, states[-1])
        if use_cache:
            self._phrase_cache[text] = (states.detach(), states[-1].detach())
            while len(self._phrase_cache) > self.cache_size:
                self._phrase_cache.popitem(last=False)
        return result

    def similarity(self, embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        """Class logits: exp(logit_scale) * cos(embeddings, text_embeddings); ... x N x K."""
        v = embeddings / (embeddings.norm(dim=-1, keepdim=True) + 1e-7)
        return self.logit_scale.exp() * v @ text_embeddings.transpose(-1, -2)
