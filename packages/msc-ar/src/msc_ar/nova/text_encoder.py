"""Text conditioning of NOVA behind one interface (NOVA §3.2).

NOVA encodes prompts with a pre-trained language model (Phi-2) into a token sequence
that prefixes the temporal sequence. Here a `TextEncoder` turns captions into
`(features (B, N, dim), mask (B, N))`:

- `ByteTextEncoder` (built in, default): UTF-8 bytes -> embeddings + 1-D sine-cosine
  positions -> a few post-norm transformer layers. Its weights are part of the NOVA
  model and train jointly, so everything runs offline with no download.
- `HFTextEncoder`: a frozen Hugging Face model loaded from a *local directory* with
  `local_files_only=True` (it never downloads). Needs the optional `transformers`
  package; its weights are not saved with NOVA (the config stores the path).

Every caption starts with a BOS token, so even an empty caption has one valid key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from msc_core.diffusion import timestep_embedding

from msc_ar.nova.post_norm_block import PostNormBlock


@runtime_checkable
class TextEncoder(Protocol):
    """Captions -> token ids -> features. `dim` is the feature width."""

    @property
    def dim(self) -> int: ...

    def tokenize(self, captions: Sequence[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`(tokens (B, N) long, mask (B, N) bool)`, True = real token."""
        ...

    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(B, N)` ids and mask -> features `(B, N, dim)`."""
        ...


def _check_captions(captions: Sequence[str]) -> None:
    if isinstance(captions, str) or not all(isinstance(c, str) for c in captions):
        raise ValueError(f"captions must be a list of str, got {captions!r}")


class ByteTextEncoder(nn.Module):
    """Byte-level tokens (256 bytes + BOS + PAD) and a small bidirectional post-norm transformer."""

    BOS = 256
    PAD = 257
    VOCAB = 258

    def __init__(self, dim: int, depth: int, num_heads: int, max_length: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (BOS + at least one byte), got {max_length}")
        self._dim = dim
        self.max_length = max_length
        self.embed = nn.Embedding(self.VOCAB, dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.input_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(PostNormBlock(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(
        self, captions: Sequence[str], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """UTF-8 bytes after a BOS token, truncated to `max_length`, right-padded to the longest."""
        _check_captions(captions)
        rows = [[self.BOS, *c.encode("utf-8")][: self.max_length] for c in captions]
        length = max(len(r) for r in rows)
        tokens = torch.full((len(rows), length), self.PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        tokens = tokens.to(device)
        return tokens, tokens != self.PAD

    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if tokens.dtype != torch.long or tokens.dim() != 2:
            raise ValueError(f"text tokens must be a (B, N) long tensor, got {tuple(tokens.shape)} {tokens.dtype}")
        if int(tokens.min()) < 0 or int(tokens.max()) >= self.VOCAB:
            raise ValueError(
                f"byte text tokens must lie in 0..{self.VOCAB - 1}, got {int(tokens.min())}..{int(tokens.max())}"
            )
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every caption needs at least one real token (the BOS token)")
        pos = timestep_embedding(torch.arange(tokens.shape[1], device=tokens.device), self._dim)  # (N, dim)
        x = self.input_norm(self.embed(tokens) + pos.to(self.embed.weight.dtype))  # (B, N, dim)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): padding is never a key
        for block in self.blocks:
            x, _ = block(x, attn_mask)
        return self.norm(x)


class HFTextEncoder:
    """A frozen local Hugging Face encoder (`AutoTokenizer` + `AutoModel`, `local_files_only=True`).

    Not an `nn.Module` on purpose: NOVA keeps it out of its state dict, so the checkpoint
    holds only NOVA's own weights and the config holds the path.
    """

    def __init__(self, path: str | Path, max_length: int = 256) -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(
                f"Hugging Face text encoder directory {path} does not exist: text_encoder='hf' loads a local "
                "model directory (config, tokenizer and weights) and never downloads"
            )
        try:
            import transformers
        except ImportError:
            raise ImportError(
                f"text_encoder='hf' (model directory {path}) needs the optional `transformers` package, "
                "the msc-ar `hf` extra: pip install 'msc-ar[hf]' (or pip install transformers); "
                "or use the built-in text_encoder='bytes'"
            ) from None
        self.path = path
        self.max_length = max_length
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
        if self.tokenizer.pad_token is None:  # decoder-only LMs (Phi-2, GPT-2) ship without one
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        get_encoder = getattr(model, "get_encoder", None)  # encoder-decoder models (T5): encoder only
        self.model = (get_encoder() if callable(get_encoder) else model).eval().requires_grad_(False)
        self._dim = int(model.config.hidden_size)

    @property
    def dim(self) -> int:
        return self._dim

    def tokenize(
        self, captions: Sequence[str], device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        _check_captions(captions)
        out = self.tokenizer(
            list(captions), padding="longest", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return out["input_ids"].to(device), out["attention_mask"].to(device).bool()

    @torch.no_grad()
    def encode_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.model.to(tokens.device)
        return self.model(input_ids=tokens, attention_mask=mask.long()).last_hidden_state
