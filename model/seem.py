"""SEEM assembled: image encoder (backbone + pixel decoder), text encoder, decoder.

The module works on tensors only: normalised, padded images in; features, prompt
inputs and head outputs out. Resizing, prompt rasterisation and turning masks into
results live in `model/predictor.py`.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone import FocalBackbone
from .config import DeformPixelDecoderConfig, SeemConfig, ViTConfig
from .decoder import GroundingInput, SeemDecoder, SpatialInput
from .decoder_v0 import SeemDecoderV0
from .deform_pixel_decoder import DeformPixelDecoder
from .mask_axes import MaskAxes
from .pixel_decoder import PixelDecoder
from .text_encoder import LanguageEncoder
from .visual_sampler import SpatialTokens, encode_visual_prompts
from .vit_backbone import ViTBackbone


def build_backbone(cfg: SeemConfig) -> nn.Module:
    """The image encoder's first half: pixels -> {res2..res5}, with `out_channels`."""
    if isinstance(cfg.backbone, ViTConfig):
        return ViTBackbone(cfg.backbone)
    return FocalBackbone(cfg.backbone)


def build_pixel_decoder(cfg: SeemConfig, in_channels: tuple[int, ...]) -> nn.Module:
    """The image encoder's second half: {res2..res5} -> (mask features, 3 multi-scale maps)."""
    if isinstance(cfg.pixel_decoder, DeformPixelDecoderConfig):
        return DeformPixelDecoder(cfg.pixel_decoder, in_channels)
    return PixelDecoder(cfg.pixel_decoder, in_channels)


DECODERS: dict[str, type[SeemDecoder]] = {"v1": SeemDecoder, "v0": SeemDecoderV0}


def build_decoder(cfg: SeemConfig) -> SeemDecoder:
    """The decoder of `cfg.decoder.variant` (v1: seem_v1; v0: seem_v0)."""
    return DECODERS[cfg.decoder.variant](cfg.decoder)


class Seem(nn.Module):
    def __init__(self, cfg: SeemConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = build_backbone(cfg)
        self.pixel_decoder = build_pixel_decoder(cfg, self.backbone.out_channels)
        self.text_encoder = LanguageEncoder(cfg.text, cfg.decoder.dim_proj)
        self.decoder = build_decoder(cfg)
        inf = cfg.inference
        self.register_buffer("pixel_mean", torch.tensor(inf.pixel_mean).view(3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(inf.pixel_std).view(3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ------------------------------------------------------------------ image encoder
    def normalize_and_pad(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8/float 3 x h x w images (same padded size) -> B x 3 x Hp x Wp, padding 0 after normalising."""
        div = self.cfg.inference.size_divisibility
        hp = max(-(-im.shape[-2] // div) * div for im in images)
        wp = max(-(-im.shape[-1] // div) * div for im in images)
        batch = torch.zeros((len(images), 3, hp, wp), dtype=self.pixel_mean.dtype, device=self.device)
        for i, im in enumerate(images):
            x = (im.to(self.device, self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std
            batch[i, :, : im.shape[-2], : im.shape[-1]] = x
        return batch

    def encode_backbone(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.backbone(pixels)

    def encode_pixels(self, backbone_features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return self.pixel_decoder(backbone_features)

    def encode_image(self, pixels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """B x 3 x Hp x Wp normalised -> (mask_features, [stride 32, 16, 8 maps])."""
        return self.encode_pixels(self.encode_backbone(pixels))

    # ------------------------------------------------------------------ prompts
    def spatial_tokens(self, pos_masks: torch.Tensor, neg_masks: torch.Tensor, mask_features: torch.Tensor,
                       multi_scale: list[torch.Tensor], generator: torch.Generator | None = None,
                       mask_axes: MaskAxes | None = None) -> SpatialTokens:
        """Prompt masks (ns x Hp x Wp) on ONE image with its unbatched features -> tokens
        (`mask_axes`: the frame of `mask_features`, None: channels)."""
        dec = self.decoder
        sources = dec.level_sources([m[None] for m in multi_scale])
        return encode_visual_prompts(
            pos_masks.bool(), neg_masks.bool(), mask_features, [s[0] for s in sources],
            list(dec.mask_sptial_embed), dec.pn_indicator.weight, dec.cfg.max_spatial_len, generator,
            dec.draw_prompt_points, mask_axes)

    def spatial_input(self, per_image: list[SpatialTokens], query_source: torch.Tensor,
                      prev_mask: torch.Tensor | None = None, memory_prompt: torch.Tensor | None = None,
                      see_text: bool = False) -> SpatialInput:
        """Pads per-image spatial tokens into a batch (token prompt -1 and embeddings -1 for padding)."""
        levels = len(per_image[0].tokens)
        ns = max(t.num_prompts for t in per_image)
        device = per_image[0].pos_embed.device
        tokens, token_prompt = [], []
        for l in range(levels):
            length = max(t.tokens[l].shape[0] for t in per_image)
            c = per_image[0].tokens[l].shape[1]
            tok = per_image[0].tokens[l].new_zeros((len(per_image), length, c))
            prm = torch.full((len(per_image), length), -1, dtype=torch.long, device=device)
            for b, t in enumerate(per_image):
                n = t.tokens[l].shape[0]
                tok[b, :n] = t.tokens[l]
                prm[b, :n] = t.token_prompt[l]
            tokens.append(tok)
            token_prompt.append(prm)

        def pad_embeds(name: str) -> torch.Tensor:
            first = getattr(per_image[0], name)
            out = first.new_full((len(per_image), ns, first.shape[1]), -1.0)
            for b, t in enumerate(per_image):
                e = getattr(t, name)
                out[b, : e.shape[0]] = e
            return out

        return SpatialInput(tokens, token_prompt, pad_embeds("pos_embed"), pad_embeds("neg_embed"),
                            query_source, prev_mask, memory_prompt, see_text)

    def grounding_input(self, phrases: list[list[str]]) -> tuple[GroundingInput, list[torch.Tensor]]:
        """Per image a list of phrases -> (batched grounding tokens, per image P x D phrase embeddings).

        All phrases of an image are concatenated into one token sequence, as the reference does.
        """
        seqs, sentence = [], []
        for texts in phrases:
            parts = [self.text_encoder.phrase_tokens(t) for t in texts]
            seqs.append(torch.cat([p[0] for p in parts]))
            sentence.append(torch.stack([p[1] for p in parts]))
        length = max(s.shape[0] for s in seqs)
        d = seqs[0].shape[1]
        tokens = seqs[0].new_zeros((len(seqs), length, d))
        padding = torch.ones((len(seqs), length), dtype=torch.bool, device=tokens.device)
        for b, s in enumerate(seqs):
            tokens[b, : s.shape[0]] = s
            padding[b, : s.shape[0]] = False
        return GroundingInput(tokens, padding), sentence

    def class_logits(self, class_emb: torch.Tensor, vocabulary_embeddings: torch.Tensor) -> torch.Tensor:
        """... x N x D class embeddings -> ... x N x (K+1) logits against the vocabulary."""
        return self.text_encoder.similarity(class_emb, vocabulary_embeddings)
