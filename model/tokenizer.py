"""CLIP's byte-level BPE tokenizer, built offline with HF `tokenizers` from the vocabulary
file shipped in `model/assets/` (the standard `bpe_simple_vocab_16e6.txt.gz`, 49,408 tokens).

The pipeline is the one HF's `CLIPTokenizerFast` runs (NFC, whitespace runs -> one space,
lower case; CLIP's word split, then byte-level; BPE with "</w>" word ends), so token ids
are those of the reference's tokenizer (openai/clip-vit-base-patch32): SOT 49406 ... EOT
49407, truncated to the context length with EOT kept, padded with EOT; the attention mask
is 1 on SOT, the text and the first EOT. Text is first cleaned as CLIP's own tokenizer does
(ftfy, HTML entities), which leaves ordinary text unchanged.
"""
from __future__ import annotations

import functools
import gzip
import html
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

VOCAB_PATH = Path(__file__).parent / "assets" / "bpe_simple_vocab_16e6.txt.gz"
SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"
# Merges used by CLIP: 49408 tokens = 2 * 256 byte tokens + 48894 merges + SOT + EOT.
NUM_MERGES = 49408 - 2 * 256 - 2
# CLIP's word split (special tokens, English contractions, letters, single digits, other runs).
_WORDS = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _byte_symbols() -> list[str]:
    """The 256 byte symbols in the order of CLIP's vocabulary (GPT-2's reversible byte ->
    printable character map: printable Latin-1 bytes first, as themselves, then the rest)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(256 - len(printable))]


def _clean(text: str) -> str:
    try:
        import ftfy  # fixes mojibake the way CLIP's own tokenizer does; optional
        text = ftfy.fix_text(text)
    except ImportError:  # pragma: no cover - ftfy is a dependency, but never required
        pass
    return html.unescape(html.unescape(text)).strip()


def build_clip_tokenizer(vocab_path: Path = VOCAB_PATH) -> Tokenizer:
    """A `tokenizers.Tokenizer` equal to HF's CLIPTokenizerFast, from the BPE merges file."""
    with gzip.open(vocab_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    symbols = _byte_symbols()
    tokens = symbols + [c + "</w>" for c in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, unk_token=EOT_TOKEN,
                     continuing_subword_prefix="", end_of_word_suffix="</w>", fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(_WORDS), behavior="removed", invert=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([SOT_TOKEN, EOT_TOKEN])
    return tokenizer


class ClipTokenizer:
    def __init__(self, vocab_path: Path = VOCAB_PATH) -> None:
        self.tokenizer = build_clip_tokenizer(vocab_path)
        self.sot_token_id = self.tokenizer.token_to_id(SOT_TOKEN)
        self.eot_token_id = self.tokenizer.token_to_id(EOT_TOKEN)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of the text, without SOT/EOT."""
        return self.tokenizer.encode(_clean(text), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode([i for i in ids if i not in (self.sot_token_id, self.eot_token_id)])
        return text.replace("</w>", " ").strip()

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
    """The shared tokenizer (built once per process)."""
    return ClipTokenizer()
