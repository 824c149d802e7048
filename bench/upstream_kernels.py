"""Stand-in for the `kernels` package when upstream autoresearch's train.py runs beside ours (bench/anchor.py).

Upstream's train.py fetches FlashAttention-3 from the Hugging Face hub at start-up (`kernels.get_kernel`),
which a machine without network cannot do. bench/anchor.py copies this file next to upstream's train.py as
`kernels.py`, so `from kernels import get_kernel` finds it first. It gives FA3's `flash_attn_func(q, k, v,
causal, window_size)` in FA3's (B, T, H, D) layout: FlexAttention for a sliding window (query i sees keys j
with 0 <= i - j <= left, FA3's window_size=(left, 0)), PyTorch's SDPA for full causal attention. It computes
what FA3 computes, more slowly: upstream's MFU with it is lower than with FA3 (39.2 % against FA3's 39.8 % on
an H100-class card, measured in ../shared/anchor).
"""

import types

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

_flex = torch.compile(flex_attention, dynamic=False)
_masks = {}


def _window_mask(T, left, device):
    if (T, left) not in _masks:
        def in_window(b, h, q, kv):
            return (q >= kv) & (q - kv <= left)
        _masks[(T, left)] = create_block_mask(in_window, B=None, H=None, Q_LEN=T, KV_LEN=T, device=device)
    return _masks[(T, left)]


# Built now, outside upstream's compiled model, for its one sliding window: half of MAX_SEQ_LEN.
from prepare import MAX_SEQ_LEN  # noqa: E402  (upstream's prepare.py, beside this file)
if torch.cuda.is_available():
    _window_mask(MAX_SEQ_LEN, MAX_SEQ_LEN // 2, "cuda")


def flash_attn_func(q, k, v, causal=True, window_size=(-1, 0)):
    assert causal, "upstream only calls causal attention"
    T, left = q.size(1), window_size[0]
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    if left < 0 or left >= T:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        y = _flex(q, k, v, block_mask=_window_mask(T, left, q.device))
    return y.transpose(1, 2)


def get_kernel(repo):
    return types.SimpleNamespace(flash_attn_interface=types.SimpleNamespace(flash_attn_func=flash_attn_func))
