"""The sliding-window attention paths against dense attention with an explicit mask, computed in float64."""

import math

import pytest
import torch


def dense_reference(q, k, v, window):
    """softmax(q k^T / sqrt(d) + mask) v in float64, with query i seeing keys j where 0 <= i - j <= window."""
    q, k, v = q.double(), k.double(), v.double()
    T = q.size(-2)
    i = torch.arange(T, device=q.device)
    dist = i[:, None] - i[None, :]
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~((dist >= 0) & (dist <= window)), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def qkv(B=2, H=3, T=48, D=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, T, D, generator=g).to(device).requires_grad_() for _ in range(3)]


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("window", [1, 7, 24, 47, 48, 1000])
def test_cpu_path_matches_dense_forward_and_backward(train, window):
    q, k, v = qkv()
    out = train.attention(q, k, v, window)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)

    qr, kr, vr = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = dense_reference(qr, kr, vr, window)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), grad_out.double())

    assert rel_err(out, ref) < 1e-5
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) < 1e-5, f"d{name}"


def test_window_reaches_exactly_w_keys_back(train):
    """Changing the key/value at distance w changes query i's output; at distance w + 1 it does not."""
    q, k, v = [t.detach() for t in qkv(B=1, H=1, T=32)]
    w, i = 5, 20
    base = train.attention(q, k, v, w)[0, 0, i]
    for dist, should_change in ((w, True), (w + 1, False)):
        k2, v2 = k.clone(), v.clone()
        k2[0, 0, i - dist] += 3.0
        v2[0, 0, i - dist] += 3.0
        changed = not torch.allclose(train.attention(q, k2, v2, w)[0, 0, i], base)
        assert changed == should_change, f"distance {dist}"


def test_model_windows_follow_pattern(train):
    config = train.GPTConfig(sequence_len=64, n_layer=6, window_pattern="SSSL")
    assert train.window_sizes(config) == [32, 32, 32, 64, 32, 64]  # the last layer is always full


@pytest.mark.parametrize("T, window", [(2048, 1024), (1024, 512), (256, 100), (384, 1), (512, 128)])
def test_block_mask_equals_create_block_mask(train, T, window):
    """The tile arithmetic in sliding_block_mask gives the tiles create_block_mask finds by brute force."""
    from torch.nn.attention.flex_attention import create_block_mask
    mine = train.sliding_block_mask(T, window, torch.device("cpu"))
    ref = create_block_mask(lambda b, h, q, kv: (q >= kv) & (q - kv <= window), None, None, T, T, device="cpu")

    def tiles(counts, indices):
        return [sorted(indices[0, 0, r, :int(counts[0, 0, r])].tolist()) for r in range(counts.shape[-1])]
    for kind in ("kv", "full_kv", "q", "full_q"):
        got = tiles(getattr(mine, f"{kind}_num_blocks"), getattr(mine, f"{kind}_indices"))
        want = tiles(getattr(ref, f"{kind}_num_blocks"), getattr(ref, f"{kind}_indices"))
        assert got == want, kind


@pytest.mark.slow
def test_flex_block_mask_matches_dense_forward_on_cpu(train):
    """The CUDA path's FlexAttention block mask, run forward on the CPU (flex has no CPU backward)."""
    from torch.nn.attention.flex_attention import flex_attention
    q, k, v = [t.detach() for t in qkv(B=1, H=2, T=256, D=16)]
    window = 100
    block_mask = train.sliding_block_mask(256, window, q.device)
    out = torch.compile(flex_attention, fullgraph=True)(q, k, v, block_mask=block_mask)
    assert rel_err(out, dense_reference(q, k, v, window)) < 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("window", [100, 1024])
def test_flex_path_matches_dense_on_cuda(train, window):
    """The path training takes on a GPU (compiled FlexAttention), forward and backward, in float32."""
    torch.backends.cuda.matmul.allow_tf32 = False
    compiled_against_dense(train, qkv(B=2, H=4, T=2048, D=64, device="cuda"), window, tolerance=1e-4)


def compiled_against_dense(train, qkv, window, tolerance):
    """train.attention compiled, as training runs it, forward and backward against float64; returns its output."""
    q, k, v = qkv
    out = torch.compile(train.attention, fullgraph=True)(q, k, v, window)
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    qr, kr, vr = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref = dense_reference(qr, kr, vr, window)
    ref_grads = torch.autograd.grad(ref, (qr, kr, vr), grad_out.double())
    assert rel_err(out, ref) < tolerance
    for name, g, r in zip("qkv", grads, ref_grads):
        assert rel_err(g, r) < tolerance, f"d{name}"
    return out


def test_window_kernel_must_be_one_the_trainer_has(train, monkeypatch):
    from common.errors import ContractError
    monkeypatch.setattr(train, "WINDOW_KERNEL", "cudnnn")
    with pytest.raises(ContractError, match="'flex'.*'cudnn'"):
        train.build_model(train.tiny_config(), "cpu")


def test_cudnn_window_kernel_leaves_the_cpu_path_alone(train, monkeypatch):
    """WINDOW_KERNEL = "cudnn" is a GPU kernel: on a CPU the model builds without the cuDNN frontend and computes
    what it computes with "flex"."""
    tokens = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    flex = train.build_model(train.tiny_config(), "cpu", seed=3)(tokens, tokens)
    monkeypatch.setattr(train, "WINDOW_KERNEL", "cudnn")
    assert torch.equal(train.build_model(train.tiny_config(), "cpu", seed=3)(tokens, tokens), flex)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("window", [16, 100, 1024])
def test_cudnn_path_matches_dense_on_cuda(train, monkeypatch, window):
    """WINDOW_KERNEL = "cudnn" (bf16: cuDNN has no float32 attention), compiled as training runs it, against float64,
    and the window exactly w keys back: one key more or less is an error 100 times larger at w = 16."""
    pytest.importorskip("cudnn", reason="WINDOW_KERNEL = 'cudnn' needs nvidia-cudnn-frontend (pip install -e '.[cudnn]')")
    monkeypatch.setattr(train, "WINDOW_KERNEL", "cudnn")
    train.build_model(train.tiny_config(), "cuda")  # imports the frontend, which registers the op
    q, k, v = [t.detach().bfloat16().requires_grad_() for t in qkv(B=2, H=4, T=2048, D=128, device="cuda")]
    out = compiled_against_dense(train, (q, k, v), window, tolerance=1e-2)
    if window == 16:
        near = rel_err(out, dense_reference(q, k, v, window))
        for other in (window - 1, window + 1):
            assert rel_err(out, dense_reference(q, k, v, other)) > 10 * near, f"window {other}"
