"""Tokenizers: CLIP's byte-level BPE (offline, vocabulary shipped as package data) and an HF wrapper.

Both return a ``LongTensor`` of shape ``(batch, context_length)`` padded with zeros (CLIP) or the
tokenizer's pad id (HF), as open_clip does. The CLIP text tower pools at the EOS token (the highest
id), the HF tower derives its attention mask from the pad id.

The BPE vocabulary ``assets/bpe_simple_vocab_16e6.txt.gz`` is OpenAI's CLIP vocabulary (MIT license,
Copyright (c) 2021 OpenAI), as redistributed in open_clip; see ``assets/NOTICE``.
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources

import regex
import torch

from .errors import ConfigError, require_file

SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character (GPT-2/CLIP byte-level BPE)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _clean(text: str) -> str:
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; plain text tokenises the same without it
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


class ClipTokenizer:
    """CLIP's byte-level BPE tokenizer, bit-compatible with open_clip's ``SimpleTokenizer``.

    Args:
        context_length: output length; longer texts are truncated keeping the EOS token last.
        bpe_path: the merges file (defaults to the vocabulary shipped with medclip).
    """

    def __init__(self, context_length: int = 77, bpe_path: str | None = None):
        self.context_length = context_length
        if bpe_path is None:
            raw = (resources.files("medclip") / "assets" / "bpe_simple_vocab_16e6.txt.gz").read_bytes()
        else:
            require_file(bpe_path, "BPE vocabulary")
            with open(bpe_path, "rb") as f:
                raw = f.read()
        merges_text = gzip.decompress(raw).decode("utf-8")
        merges = [tuple(line.split()) for line in merges_text.split("\n")[1 : 49152 - 256 - 2 + 1]]
        vocab = list(bytes_to_unicode().values())
        vocab += [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = {i: token for token, i in self.encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.sot_token_id = self.encoder[SOT_TOKEN]
        self.eot_token_id = self.encoder[EOT_TOKEN]
        self.vocab_size = len(vocab)
        self.pad_token_id = 0
        self._pattern = regex.compile(
            r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, str] = {SOT_TOKEN: SOT_TOKEN, EOT_TOKEN: EOT_TOKEN}

    def _bpe(self, token: str) -> str:
        if token in self._cache:
            return self._cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if best not in self.bpe_ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        result = " ".join(word)
        self._cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end tokens."""
        ids = []
        for token in self._pattern.findall(_clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self._bpe(token).split(" "))
        return ids

    def decode(self, ids) -> str:
        """Text of a sequence of ids (special tokens and padding dropped)."""
        specials = {self.sot_token_id, self.eot_token_id, self.pad_token_id}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in specials)
        raw = bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace")
        return raw.replace("</w>", " ").strip()

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        """Tokenise a batch into ``(B, context_length)`` ids: SOT, tokens, EOT, zero padding.

        Texts longer than the context are truncated and their last token replaced by EOT.
        """
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id][:length]
            ids[-1] = self.eot_token_id
            out[row, : len(ids)] = torch.tensor(ids)
        return out


class HFTokenizer:
    """A Hugging Face tokenizer loaded from a local folder, returning padded id tensors.

    Args:
        model_dir: folder with the tokenizer files (``tokenizer.json`` / ``vocab.txt`` ...).
        context_length: maximum length (also the padded length).
    """

    def __init__(self, model_dir: str, context_length: int = 77):
        from transformers import AutoTokenizer

        require_file(model_dir, "text model folder")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.context_length = context_length
        self.pad_token_id = self.tokenizer.pad_token_id or 0

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(texts, padding="max_length", truncation=True,
                             max_length=context_length or self.context_length, return_tensors="pt")
        return enc["input_ids"]


def get_tokenizer(name_or_config="clip", context_length: int | None = None):
    """Return the tokenizer for a model config, a model name, or ``"clip"``.

    Args:
        name_or_config: a :class:`~medclip.config.ModelConfig`, a registered model name, or ``"clip"``.
        context_length: overrides the config's context length.
    """
    from .config import ModelConfig

    if isinstance(name_or_config, str):
        if name_or_config == "clip":
            return ClipTokenizer(context_length or 77)
        from .registry import get_model_config

        name_or_config = get_model_config(name_or_config)
    if not isinstance(name_or_config, ModelConfig):
        raise ConfigError(f"get_tokenizer needs a model name or ModelConfig, got {type(name_or_config).__name__}")
    text = name_or_config.text
    if text.hf_model_dir:
        from .paths import resolve_path

        return HFTokenizer(resolve_path(text.hf_model_dir), context_length or text.context_length)
    return ClipTokenizer(context_length or text.context_length)

