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

decoder.onnx, `onnxruntime` flavour (export.fused_decoder; the manifest's `kv_cache` = "shared_bnsh")
    | inputs_embeds    | float32 | [batch, seq, dim]                       | as above                                  |
    | past_key.{i}     | float32 | [batch, n_kv_heads, max_seq, head_dim]  | the whole cache buffer of layer i         |
    | past_value.{i}   | float32 | [batch, n_kv_heads, max_seq, head_dim]  |                                           |
    | seqlens_k        | int32   | [batch]                                 | pos + seq - 1: the last row this call adds |
    | total_sequence_length | int32 | []                                 | pos + seq                                 |
    | logits           | float32 | [batch, vocab]                          | as above                                  |
    | present_key.{i}  | float32 | [batch, n_kv_heads, max_seq, head_dim]  | bound to the same buffer as past_key.{i}: |
    | present_value.{i}| float32 | [batch, n_kv_heads, max_seq, head_dim]  | GroupQueryAttention writes rows in place  |
    Positions are pos .. pos+seq-1, derived by the op from seqlens_k; no position_ids input.

The K/V cache is seq-major so that rows 0..pos-1 of a cache preallocated as
[max_seq_len, batch, n_kv_heads, head_dim] are one contiguous block: a backend binds
`past_*` to the cache's start and `new_*` to row `pos`, and no K/V byte is copied.
"""

# a decoder graph's K/V binding (GraphSpec.kv_cache)
SEQ_MAJOR = "seq_major"  # past_* = rows 0..pos-1, new_* = the rows added (the traced, standard graph)
SHARED_BNSH = "shared_bnsh"  # past_* and present_* = one [B, Hkv, max_seq, hd] buffer (the fused graph)
KV_CACHES = (SEQ_MAJOR, SHARED_BNSH)

PIXEL_VALUES = "pixel_values"
IMAGE_EMBEDS = "image_embeds"

INPUTS_EMBEDS = "inputs_embeds"
POSITION_IDS = "position_ids"
LOGITS = "logits"
SEQLENS_K = "seqlens_k"
TOTAL_SEQ_LEN = "total_sequence_length"


def past_key(i: int) -> str:
    return f"past_key.{i}"


def past_value(i: int) -> str:
    return f"past_value.{i}"


def new_key(i: int) -> str:
    return f"new_key.{i}"


def new_value(i: int) -> str:
    return f"new_value.{i}"


def present_key(i: int) -> str:
    return f"present_key.{i}"


def present_value(i: int) -> str:
    return f"present_value.{i}"


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
