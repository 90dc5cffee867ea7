"""Tensor names of the two graphs: the one place they are spelled.

vision.onnx
    | name          | dtype   | shape                          | meaning                                 |
    |---------------|---------|--------------------------------|-----------------------------------------|
    | pixel_values  | float32 | [batch, 3, H, W]               | preprocessed RGB, NCHW                  |
    | image_embeds  | float32 | [batch, image_tokens, dim]     | adapter output, in the decoder's width  |

decoder.onnx (one graph for prefill and decode)
    | name             | dtype   | shape                                   | meaning                                   |
    |------------------|---------|-----------------------------------------|-------------------------------------------|
    | inputs_embeds    | float32 | [batch, seq, dim]                       | token embeddings, image rows spliced in   |
    |                  |         |                                         | (runtime.embedding builds them)           |
    | position_ids     | int64   | [batch, seq]                            | absolute positions, pos .. pos+seq-1      |
    | past_key.{i}     | float32 | [past_seq, batch, n_kv_heads, head_dim] | cache rows 0..pos-1 of layer i (RoPE'd)   |
    | past_value.{i}   | float32 | [past_seq, batch, n_kv_heads, head_dim] |                                           |
    | logits           | float32 | [batch, vocab]                          | next-token logits of the last position    |
    | new_key.{i}      | float32 | [seq, batch, n_kv_heads, head_dim]      | K of the seq positions this call adds     |
    | new_value.{i}    | float32 | [seq, batch, n_kv_heads, head_dim]      | V of the same                             |

embed_tokens.npy   float32 [vocab, dim]: the input embedding table, memory-mapped by the runtime.
    The table is not a Gather in the graph: with tied embeddings the graph holds it once, for
    the logits Gemm, which ONNX Runtime pre-packs (and then frees the original); the runtime
    pages in only the rows it looks up.  So one copy is resident, and the logits keep the
    pre-packed speed (46% faster decode at full size than an unpacked shared table).

The K/V cache is seq-major so that rows 0..pos-1 of a cache preallocated as
[max_seq_len, batch, n_kv_heads, head_dim] are one contiguous block: a backend binds
`past_*` to the cache's start and `new_*` to row `pos`, and no K/V byte is copied.
"""

PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"

INPUTS_EMBEDS = "inputs_embeds"
POSITION_IDS = "position_ids"
LOGITS = "logits"


def past_key(i: int) -> str:
    return f"past_key.{i}"


def past_value(i: int) -> str:
    return f"past_value.{i}"


def new_key(i: int) -> str:
    return f"new_key.{i}"


def new_value(i: int) -> str:
    return f"new_value.{i}"


def decoder_input_names(n_layers: int) -> list[str]:
    names = [INPUTS_EMBEDS, POSITION_IDS]
    for i in range(n_layers):
        names += [past_key(i), past_value(i)]
    return names


def decoder_output_names(n_layers: int) -> list[str]:
    names = [LOGITS]
    for i in range(n_layers):
        names += [new_key(i), new_value(i)]
    return names
