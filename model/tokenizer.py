"""CLIP byte-level BPE tokenizer, built offline from the vocabulary file shipped in
`model/assets/` (the standard `bpe_simple_vocab_16e6.txt.gz`, 49,408 tokens).

Matches the reference's tokenisation (HF CLIPTokenizer of openai/clip-vit-base-patch32):
lower-cased, SOT 49406 ... EOT 49407, truncated to the context length with EOT kept,
padded with EOT; the attention mask is 1 on SOT, the text and the first EOT.
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import regex
import torch

VOCAB_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# Merges used by CLIP: 49408 tokens = 2 * 256 byte tokens + 48894 merges + SOT + EOT.
NUM_MERGES = 49408 - 2 * 256 - 2

_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """Reversible map of the 256 bytes to printable unicode characters (GPT-2's scheme):
    printable Latin-1 bytes map to themselves, the rest to code points from 256 upwards."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _clean(text: str) -> str:
    try:
        import ftfy  # fixes mojibake the way CLIP's own tokenizer does; optional
        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a dependency, but never required
        pass
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).strip().lower()


class ClipTokenizer:
    def __init__(self, vocab_path: Path = VOCAB_PATH) -> None:
        with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        byte_chars = list(_byte_to_unicode().values())
        vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks = {merge: i for i, merge in enumerate(merges)}
        self.byte_encoder = _byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self._bpe_cache: dict[str, list[str]] = {SOT_TOKEN: [SOT_TOKEN], EOT_TOKEN: [EOT_TOKEN]}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, token: str) -> list[str]:
        cached = self._bpe_cache.get(token)
        if cached is not None:
            return cached
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._bpe_cache) < 100_000:
            self._bpe_cache[token] = word
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of the text, without SOT/EOT."""
        ids: list[int] = []
        for piece in _PATTERN.findall(_clean(text)):
            piece = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self._bpe(piece))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids if i not in (self.sot_token_id, self.eot_token_id))
        data = bytearray(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def tokenize_ids(self, text: str, context_length: int) -> list[int]:
        """SOT + text + EOT, text truncated so that the whole fits the context."""
        ids = self.encode(text)[: context_length - 2]
        return [self.sot_token_id, *ids, self.eot_token_id]

    def __call__(self, texts: list[str] | str, context_length: int = 77) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (input_ids N x L, attention_mask N x L), padded with EOT to the context length."""
        if isinstance(texts, str):
            texts = [texts]
        input_ids = torch.full((len(texts), context_length), self.eot_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(texts), context_length), dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.tokenize_ids(text, context_length)
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    """The shared tokenizer (loading the vocabulary takes ~0.3 s)."""
    return ClipTokenizer()
