"""Token embeddings on the host: ids (+ image rows) -> the decoder graph's `inputs_embeds`.

The table [vocab, dim] is `embed_tokens.npy`, memory-mapped read-only: a lookup pages in
only the rows it touches, so the full table is resident once, inside the decoder graph's
logits Gemm (see runtime.graph_io).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import EngineError
from runtime.manifest import ArraySpec


def splice_image(table: np.ndarray, ids: np.ndarray, image_embeds: np.ndarray | None, image_pad_id: int) -> np.ndarray:
    """ids [S] -> embeddings [S, dim]; the rows of image_pad ids become image rows, in order."""
    x = np.asarray(table[ids], dtype=np.float32)  # [S, dim] (fancy indexing copies the rows)
    is_image = ids == image_pad_id  # [S]
    n = int(is_image.sum())
    got = 0 if image_embeds is None else image_embeds.shape[0]
    if n != got:
        raise ValueError(f"prompt has {n} image_pad tokens but {got} image embeddings were given")
    if n:
        x[is_image] = image_embeds  # [n, dim] -> the image rows
    return x


class TokenEmbedding:
    def __init__(self, path: Path, spec: ArraySpec, image_pad_id: int):
        try:
            table = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise EngineError(f"{path}: not a readable .npy table ({e}); re-export the engine folder") from None
        if str(table.dtype) != spec.dtype or tuple(table.shape) != tuple(spec.shape):
            raise EngineError(f"{path}: {table.dtype}{list(table.shape)}, manifest.json says "
                              f"{spec.dtype}{list(spec.shape)}; re-export the engine folder")
        self.table = table  # [vocab, dim], memory-mapped
        self.image_pad_id = image_pad_id

    def prompt(self, ids: np.ndarray, image_embeds: np.ndarray | None) -> np.ndarray:
        # ids [S], image_embeds [1, N, dim] -> [1, S, dim]
        image = None if image_embeds is None else image_embeds[0]
        return splice_image(self.table, ids, image, self.image_pad_id)[None]

    def tokens(self, ids: np.ndarray) -> np.ndarray:
        # ids [S] -> [1, S, dim]
        return np.asarray(self.table[ids], dtype=np.float32)[None]
