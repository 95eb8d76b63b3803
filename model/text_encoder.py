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
end token and batched by length instead of being padded to 77.
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
        self.cache_size = 4096
        # Weights changing (loading, training) invalidates the caches.
        self.register_load_state_dict_post_hook(lambda module, keys: module.clear_cache())

    def clear_cache(self) -> None:
        self._class_cache.clear()
        self._phrase_cache.clear()

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
        if missing:
            prompts = [t.format(clean_class_name(n)) for n in missing for t in PROMPT_TEMPLATES]
            feats = self.encode_sentences(prompts).view(len(missing), len(PROMPT_TEMPLATES), -1)
            means = feats.mean(dim=1)
            means = means / means.norm(dim=-1, keepdim=True)
            fresh = dict(zip(missing, means))
        else:
            fresh = {}
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
