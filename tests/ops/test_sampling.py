"""sample_categorical: the counter hash against a plain-integer loop, Triton vs reference (same words
and same samples under the interpreter), determinism, and a chi-square test against the softmax."""

from __future__ import annotations

import statistics

import pytest
import torch

from deltairis import ops
from deltairis.ops import sampling
from deltairis.ops.sampling import counter_uint32, sample_categorical_ref, stream_keys, stream_keys_tensor


def chi2_critical(df: int, alpha: float = 1e-4) -> float:
    """Upper ``alpha`` quantile of chi-square(df), Wilson-Hilferty approximation (stdlib only)."""
    z = statistics.NormalDist().inv_cdf(1.0 - alpha)
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * c**0.5) ** 3


def chi2_statistic(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples.flatten().cpu(), minlength=probs.numel()).double()
    expected = probs.double().cpu() * samples.numel()
    return ((counts - expected) ** 2 / expected).sum().item()


def test_counter_words_match_integer_loop() -> None:
    seed, offset = 0xDEADBEEF12345678, (1 << 40) + 17
    words = counter_uint32(300, seed, offset, "cpu")
    k0, k1 = stream_keys(seed, offset)
    for i in range(300):
        x = sampling._lowbias32_int(((i * sampling.GOLDEN) & 0xFFFFFFFF) ^ k0)
        assert words[i].item() == sampling._lowbias32_int(x ^ k1)
    assert 0 <= words.min().item() and words.max().item() < 2**32


def test_stream_keys_depend_on_seed_and_offset() -> None:
    keys = {stream_keys(s, o) for s in (0, 1, 2**33) for o in (0, 1, 2**32)}
    assert len(keys) == 9
    with pytest.raises(TypeError, match="Python ints"):
        stream_keys(0, torch.tensor(1))  # type: ignore[arg-type]


@pytest.mark.parametrize("offset", [0, 5, 2**32 + 3, -7, 2**63 - 1])
def test_tensor_offset_gives_the_same_words_as_int_offset(offset: int) -> None:
    seed = 0x1234_5678_9ABC
    assert stream_keys_tensor(seed, torch.tensor(offset)) == tuple(
        torch.tensor(k) for k in stream_keys(seed, offset)
    )
    logits = torch.randn(17, 9)
    want = sample_categorical_ref(logits, seed=seed, offset=offset)
    for dtype in (torch.int64, torch.int32):
        if dtype == torch.int32 and not -(2**31) <= offset < 2**31:
            continue
        got = sample_categorical_ref(logits, seed=seed, offset=torch.tensor([offset], dtype=dtype))
        assert torch.equal(got, want)


def test_bad_offset_is_rejected() -> None:
    logits = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="one integer"):
        ops.sample_categorical(logits, seed=0, offset=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one integer"):
        ops.sample_categorical(logits, seed=0, offset=torch.tensor(1.0))
    with pytest.raises(TypeError, match="offset must be"):
        ops.sample_categorical(logits, seed=0, offset=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="offset tensor is on meta"):
        ops.sample_categorical(logits, seed=0, offset=torch.tensor(1, device="meta"))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="temperature"):
        ops.sample_categorical(torch.zeros(2, 3), temperature=0.0, seed=0, offset=0)
    with pytest.raises(ValueError, match="floating point"):
        ops.sample_categorical(torch.zeros(2, 3, dtype=torch.int64), seed=0, offset=0)
    with pytest.raises(ValueError, match="non-empty last dimension"):
        ops.sample_categorical(torch.zeros(2, 0), seed=0, offset=0)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_reference_is_distributed_like_softmax(temperature: float) -> None:
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.2, 0.0])
    probs = torch.softmax(logits / temperature, dim=-1)
    samples = sample_categorical_ref(logits.expand(20000, 6), temperature=temperature, seed=7, offset=3)
    assert chi2_statistic(samples, probs) < chi2_critical(5)


def test_chi_square_rejects_a_wrong_distribution() -> None:
    """The distribution test has power: samples at temperature 2 fail against softmax(logits)."""
    logits = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.2, 0.0])
    samples = sample_categorical_ref(logits.expand(20000, 6), temperature=2.0, seed=7, offset=3)
    assert chi2_statistic(samples, torch.softmax(logits, dim=-1)) > chi2_critical(5)


def test_reference_is_deterministic_and_offset_sensitive() -> None:
    logits = torch.randn(64, 50)
    a = ops.sample_categorical(logits, seed=1, offset=5, backend="torch")
    assert torch.equal(a, ops.sample_categorical(logits, seed=1, offset=5, backend="torch"))
    assert not torch.equal(a, ops.sample_categorical(logits, seed=1, offset=6, backend="torch"))
    assert not torch.equal(a, ops.sample_categorical(logits, seed=2, offset=5, backend="torch"))


# Shapes: a single column, odd widths, a 3-D batch, rows wider than one 1024-column chunk.
CPU_SHAPES = [(1, 1), (5, 37), (3, 4, 7), (9, 1500), (40, 2)]


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_equals_reference_interpreter(shape: tuple, temperature: float) -> None:
    logits = torch.randn(*shape) * 2
    got = ops.sample_categorical(logits, temperature=temperature, seed=11, offset=42, backend="triton")
    want = sample_categorical_ref(logits, temperature=temperature, seed=11, offset=42)
    assert got.dtype == torch.int64 and got.shape == shape[:-1]
    assert torch.equal(got, want)


@pytest.mark.usefixtures("interpret")
def test_triton_strided_and_bf16_logits_interpreter() -> None:
    base = torch.randn(30, 12)
    strided = base.t()  # (12, 30), non-contiguous rows
    got = ops.sample_categorical(strided, seed=3, offset=1, backend="triton")
    assert torch.equal(got, sample_categorical_ref(strided, seed=3, offset=1))
    half = base.to(torch.bfloat16)
    got = ops.sample_categorical(half, seed=3, offset=1, backend="triton")
    assert torch.equal(got, sample_categorical_ref(half, seed=3, offset=1))


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize("offset", [3, 2**32 + 1, -2])
def test_triton_tensor_offset_equals_reference_interpreter(offset: int) -> None:
    logits = torch.randn(6, 40)
    want = sample_categorical_ref(logits, seed=77, offset=offset)
    got = ops.sample_categorical(logits, seed=77, offset=torch.tensor(offset), backend="triton")
    assert torch.equal(got, want)


@pytest.mark.usefixtures("interpret")
def test_triton_is_deterministic_interpreter() -> None:
    logits = torch.randn(33, 19)
    a = ops.sample_categorical(logits, seed=5, offset=9, backend="triton")
    assert torch.equal(a, ops.sample_categorical(logits, seed=5, offset=9, backend="triton"))
    assert not torch.equal(a, ops.sample_categorical(logits, seed=5, offset=10, backend="triton"))


@pytest.mark.usefixtures("interpret")
def test_triton_is_distributed_like_softmax_interpreter() -> None:
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3, 1.0])
    temperature = 0.8
    samples = ops.sample_categorical(
        logits.expand(4000, 6), temperature=temperature, seed=2, offset=0, backend="triton"
    )
    assert chi2_statistic(samples, torch.softmax(logits / temperature, dim=-1)) < chi2_critical(5)


# A slice of rows [a, b) sampled with row_offset=a draws what rows [a, b) of the full call draw (the
# distributed actor-critic: each rank imagines from its slice of starts). Odd sizes, several shapes.
ROW_SLICES = [((5, 37), 2, 5), ((86, 3), 43, 86), ((86, 3), 0, 43), ((7, 1500), 3, 4), ((9, 1), 1, 8)]


def _row_slice_cases(shape: tuple, a: int, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.randn(*shape) * 2
    return logits, logits[a:b]


@pytest.mark.parametrize(("shape", "a", "b"), ROW_SLICES)
def test_row_offset_slice_equals_rows_of_full_call_reference(shape: tuple, a: int, b: int) -> None:
    logits, part = _row_slice_cases(shape, a, b)
    for offset in (7, torch.tensor([2**32 + 5])):
        full = sample_categorical_ref(logits, temperature=0.9, seed=13, offset=offset)
        got = sample_categorical_ref(part, temperature=0.9, seed=13, offset=offset, row_offset=a)
        assert torch.equal(got, full[a:b])
    # the words themselves: rows [a, b) of the stream
    v = shape[-1]
    words = counter_uint32(part.numel(), 13, 7, "cpu", first=a * v)
    assert torch.equal(words, counter_uint32(logits.numel(), 13, 7, "cpu")[a * v : b * v])


def test_row_offset_of_a_3d_batch_counts_flattened_rows() -> None:
    logits = torch.randn(6, 5, 11)
    full = sample_categorical_ref(logits, seed=2, offset=3)
    got = sample_categorical_ref(logits[2:5], seed=2, offset=3, row_offset=2 * 5)
    assert torch.equal(got, full[2:5])


def test_bad_row_offset_is_rejected() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(ValueError, match="row_offset must be >= 0"):
        ops.sample_categorical(logits, seed=0, offset=0, row_offset=-1)
    with pytest.raises(TypeError, match="row_offset must be a Python int"):
        ops.sample_categorical(logits, seed=0, offset=0, row_offset=torch.tensor(1))  # type: ignore[arg-type]


@pytest.mark.usefixtures("interpret")
@pytest.mark.parametrize(("shape", "a", "b"), ROW_SLICES)
def test_row_offset_slice_equals_rows_of_full_call_interpreter(shape: tuple, a: int, b: int) -> None:
    logits, part = _row_slice_cases(shape, a, b)
    for offset in (7, torch.tensor([2**32 + 5])):
        full = ops.sample_categorical(logits, temperature=0.9, seed=13, offset=offset, backend="triton")
        got = ops.sample_categorical(
            part, temperature=0.9, seed=13, offset=offset, row_offset=a, backend="triton"
        )
        assert torch.equal(got, full[a:b])
        ref = sample_categorical_ref(part, temperature=0.9, seed=13, offset=offset, row_offset=a)
        assert torch.equal(got, ref)


@pytest.mark.usefixtures("interpret")
def test_row_offset_limit_interpreter() -> None:
    with pytest.raises(RuntimeError, match="with the row offset"):
        ops.sample_categorical(torch.randn(2, 4), seed=0, offset=0, row_offset=2**29, backend="triton")
    from deltairis.kernels.sampling import sample_categorical_triton

    with pytest.raises(ValueError, match="row offset"):
        sample_categorical_triton(torch.randn(2, 4), seed=0, offset=0, row_offset=2**29)


# ----------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("shape", [(344, 1024), (86, 3), (86, 2), (7, 5000)])
def test_triton_gpu_deterministic_and_agrees_with_reference(shape: tuple) -> None:
    logits = torch.randn(*shape, device="cuda")
    a = ops.sample_categorical(logits, seed=9, offset=1, backend="triton")
    assert torch.equal(a, ops.sample_categorical(logits, seed=9, offset=1, backend="triton"))
    want = sample_categorical_ref(logits, seed=9, offset=1)
    # Same random words; only a last-ulp difference of the device log can flip a near-tie.
    assert (a == want).float().mean().item() >= 0.999


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_gpu_is_distributed_like_softmax(dtype: torch.dtype) -> None:
    logits = torch.tensor([0.5, -1.0, 1.5, 0.0, -0.3, 1.0], device="cuda").to(dtype)
    samples = ops.sample_categorical(
        logits.expand(200000, 6), temperature=0.8, seed=4, offset=2, backend="triton"
    )
    assert chi2_statistic(samples, torch.softmax(logits.float() / 0.8, dim=-1)) < chi2_critical(5)


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_triton_offset_tensor_in_cuda_graph_gpu() -> None:
    """A captured sampler reads the offset tensor at replay time; advancing it changes the draws."""
    logits = torch.randn(86, 1024, device="cuda")
    offset = torch.zeros((), dtype=torch.int64, device="cuda")
    ops.sample_categorical(logits, seed=3, offset=offset, backend="triton")  # compile outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sample_categorical(logits, seed=3, offset=offset, backend="triton")
        offset += 1
    draws = []
    for _ in range(3):
        graph.replay()
        draws.append(out.clone())
    torch.cuda.synchronize()
    assert offset.item() == 3
    for i, d in enumerate(draws):
        want = sample_categorical_ref(logits, seed=3, offset=i)
        assert (d == want).float().mean().item() >= 0.999
    assert not torch.equal(draws[0], draws[1])


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_row_offset_slice_in_cuda_graph_gpu() -> None:
    """Under a captured graph with a tensor offset, rows [a, b) with row_offset=a equal the full call's."""
    logits = torch.randn(86, 1024, device="cuda")
    part = logits[43:].clone()
    offset = torch.zeros((), dtype=torch.int64, device="cuda")
    ops.sample_categorical(part, seed=3, offset=offset, row_offset=43, backend="triton")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ops.sample_categorical(part, seed=3, offset=offset, row_offset=43, backend="triton")
        offset += 1
    for i in range(2):
        graph.replay()
        full = ops.sample_categorical(logits, seed=3, offset=i, backend="triton")
        assert torch.equal(out, full[43:])


@pytest.mark.gpu
@pytest.mark.usefixtures("compiled")
def test_auto_uses_triton_on_cuda_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("auto fell back to the reference on CUDA")

    monkeypatch.setattr(sampling, "sample_categorical_ref", boom)
    out = ops.sample_categorical(torch.randn(8, 1024, device="cuda"), seed=0, offset=0, backend="auto")
    assert out.shape == (8,) and out.is_cuda
