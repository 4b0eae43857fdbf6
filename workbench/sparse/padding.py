"""Padded batches attended example by example: every example gets what it would get alone.

A padded batch of self-attention (query ``i`` is token ``kv_len - q_len + i``: a full forward,
or the last ``q_len`` tokens when decoding with a key-value cache) whose examples each hold their
real tokens in one contiguous span (right padding for encoders, left padding for decoders) is
attended by running the method on each example's span alone, with no padding at all, and putting
the results back in place: the method selects among real keys only (a top-k keeps k real keys,
the sinks are the first real tokens, pooled blocks hold no padding) and every method, also those
that pool keys or correct their output, takes padded inputs this way. Padded query rows keep no
key and get 0, as rows with no visible key do in `kernels.api`.

Shapes: ``q: [batch, heads, q_len, d_head]``, ``k, v: [batch, kv_heads, kv_len, d_head]`` with
``q_len <= kv_len``, ``key_padding: [batch, kv_len]`` bool (True = real key).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from kernels.layout import Layout
from kernels.reference import default_scale, repeat_kv, scaled_scores

AttendOne = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, Layout]]
"""``(q, k, v) -> (out, layout)`` of one unpadded example (batch 1)."""


def real_spans(key_padding: torch.Tensor) -> list[tuple[int, int]] | None:
    """Per example, ``(start, end)`` of its real keys when they form one contiguous span (an
    example without real keys gets ``(0, 0)``); None when some example's real keys do not."""
    if key_padding.dim() != 2 or key_padding.dtype != torch.bool:
        raise ValueError(
            f"key_padding must be a bool tensor [batch, kv_len], got {key_padding.dtype} "
            f"{tuple(key_padding.shape)}"
        )
    counts = key_padding.sum(dim=1)
    starts = torch.where(counts > 0, key_padding.int().argmax(dim=1), 0)
    positions = torch.arange(key_padding.shape[1], device=key_padding.device)
    span = (positions >= starts[:, None]) & (positions < (starts + counts)[:, None])
    if not torch.equal(span, key_padding):
        return None
    return [
        (start, start + count)
        for start, count in zip(starts.tolist(), counts.tolist(), strict=True)
    ]


def attend_examples(
    attend_one: AttendOne,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    spans: list[tuple[int, int]],
    *,
    causal: bool,
    scale: float | None,
    block_size: int,
) -> tuple[torch.Tensor, Layout]:
    """``(out, layout)`` of the padded batch: ``attend_one`` on each example's real span
    (``spans`` from `real_spans`: its keys, and the query rows of its tokens, which are the
    span's last tokens, so an end-aligned causal mask stays aligned), put back in place. ``out``
    is 0 on padded query rows; ``layout`` holds the entries each example kept (a token mask over
    the whole batch: ``batch x heads x q_len x kv_len`` booleans)."""
    batch, heads, q_len, _ = q.shape
    kv_len = k.shape[2]
    first_query = kv_len - q_len  # the token of query row 0
    scale = default_scale(q.shape[-1]) if scale is None else scale
    outputs = []
    kept = torch.zeros(batch, heads, q_len, kv_len, dtype=torch.bool, device=q.device)
    for example, (start, end) in enumerate(spans):
        row_start, row_end = max(start - first_query, 0), end - first_query
        if row_end <= row_start:  # no real query row
            outputs.append(q.new_zeros(1, heads, q_len, v.shape[-1]))
            continue
        rows, keys = slice(row_start, row_end), slice(start, end)
        q_one = q[example : example + 1, :, rows]
        k_one, v_one = (tensor[example : example + 1, :, keys] for tensor in (k, v))
        out, layout = attend_one(q_one, k_one, v_one)
        outputs.append(F.pad(out, (0, 0, row_start, q_len - row_end)))
        scores = None
        if layout.row_threshold is not None:
            scores = scaled_scores(q_one, repeat_kv(k_one, heads), scale)
        kept[example, :, rows, keys] = layout.to_dense(scores)[0]
    layout = Layout.from_token_mask(kept, block_q=block_size, block_k=block_size, causal=causal)
    return torch.cat(outputs), layout
