"""Preflight: check each enabled GPU fast path once against its reference before a CUDA run trains.

The fast paths are on by default on CUDA: the Triton kernels behind :mod:`deltairis.ops`, channels_last
frame CNNs with the fused GroupNorm+SiLU (:func:`deltairis.models.convnet.set_frame_cnn_options`), CUDA-graph
replay of the imagined step or of the whole rollout (``actor_critic.cuda_graphs`` /
``cuda_graph_rollout``) and bf16 autocast (``training.<component>.mixed_precision``). :func:`run_preflight`
runs each enabled one at the run's shapes (batch sizes and sequence lengths of the training config, the
agent's models) on the run's device, next to its reference, and compares outputs and, for trained paths,
gradients within the tolerances of the test suite (``tests/ops``, ``tests/models/test_frame_cnn_layout.py``,
``tests/rl/test_rollout.py``). :func:`apply_fallbacks` then switches every failed path off for the run, with
one warning naming it and its error, so the run goes on on the reference path:

=============================  ==========================================================================
path                           switched off by
=============================  ==========================================================================
``triton.attention``           ``ops.switch_off_kernel(op)``: that op runs its PyTorch reference for the
``triton.attention_kvcache``   rest of the process; the other kernels stay on
``triton.sample_categorical``
``triton.twohot_expectation``
``triton.group_norm_silu``     ``set_frame_cnn_options(agent, fused_norm=False)`` (its only user)
``frame_cnn``                  ``set_frame_cnn_options(agent, channels_last=False, fused_norm=False)``
``cuda_graphs``                the actor-critic loss's env steps eagerly and no rollout graph is used
``bf16.tokenizer``             ``cfg.training.tokenizer.mixed_precision = False``
``bf16.world_model``           ``cfg.training.world_model.mixed_precision = False``
=============================  ==========================================================================

Checks run in that order, each one as the run would after the fallbacks of the failures before it (a
broken sampling kernel fails its own check, not the CUDA-graph check that uses it); :func:`run_preflight`
undoes those temporary switches before it returns and changes nothing else (weights, buffers, modes,
gradients and random states are as they were). Results are :class:`FastPathResult` records
(``as_dict()`` gives ``{name, status, detail}`` for metrics.jsonl and the run's config); ``status`` is
``ok``, ``failed: <error>`` or ``not applicable`` (off in the config, or not a CUDA run: on CPU no work
is done at all). A check that runs out of GPU memory is retried on half the batch, down to one row.

Trainer wiring (one call after the components are built and the run's config is saved)::

    results = preflight(agent, cfg, device, actor_critic_loss=components["actor_critic"].loss)

``common.preflight=false`` turns it off.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from deltairis import ops
from deltairis.config.schema import TrainerConfig
from deltairis.data import Batch
from deltairis.models.convnet import FrameDecoder, FrameEncoder, FrameLayers, set_frame_cnn_options
from deltairis.ops.twohot import symlog
from deltairis.rl.losses import ActorCriticLoss, actor_critic_loss
from deltairis.rl.world_model_env import WorldModelEnv

if TYPE_CHECKING:
    from deltairis.agent import Agent

logger = logging.getLogger(__name__)

OK = "ok"
NOT_APPLICABLE = "not applicable"

#: Every fast path, in the order the checks run.
KERNEL_PATHS = (
    "triton.attention",
    "triton.attention_kvcache",
    "triton.sample_categorical",
    "triton.twohot_expectation",
    "triton.group_norm_silu",
)
FAST_PATHS = (*KERNEL_PATHS, "frame_cnn", "cuda_graphs", "bf16.tokenizer", "bf16.world_model")


@dataclass(frozen=True)
class FastPathResult:
    """The preflight verdict on one fast path."""

    name: str
    status: str  # "ok" | "failed: <error>" | "not applicable"
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "detail": self.detail}


class NotApplicable(Exception):
    """Raised by a check whose fast path this run does not use (the message says why)."""


class Mismatch(AssertionError):
    """Raised by a check whose fast path computed values outside the reference's tolerance."""


def fast_paths_active(device: torch.device) -> bool:
    """Whether the run's device uses the fast paths at all (they are CUDA only)."""
    return device.type == "cuda"


# -- comparisons (the test suite's criteria) --------------------------------------------------------------
def _rel_err(x: torch.Tensor, ref: torch.Tensor, scale: float | None = None) -> float:
    """Max absolute error relative to ``scale`` (default: the reference's largest magnitude)."""
    if scale is None:
        scale = ref.float().abs().max().item() if ref.numel() else 0.0
    if x.numel() == 0:
        return 0.0
    return ((x.float() - ref.float()).abs().max() / max(scale, 1e-12)).item()


def _check_rel(
    what: str, x: torch.Tensor, ref: torch.Tensor, bound: float, scale: float | None = None
) -> None:
    if x.shape != ref.shape:
        raise Mismatch(f"{what}: shape {tuple(x.shape)} != reference {tuple(ref.shape)}")
    err = _rel_err(x, ref, scale)
    if not err < bound:  # NaN fails too
        raise Mismatch(f"{what}: relative error {err:.3g} >= {bound:g}")


def _check_close(what: str, x: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> None:
    try:
        torch.testing.assert_close(x.float(), ref.float(), rtol=rtol, atol=atol)
    except AssertionError as exc:
        first = str(exc).strip().splitlines()
        raise Mismatch(f"{what}: {' '.join(first[:3])}") from None


def _grads(params: Sequence[nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]


# -- the run's shapes -------------------------------------------------------------------------------------
@dataclass
class Context:
    """What a check needs: the agent, the run's config and device, and the batch divisor (OOM retries)."""

    agent: Agent
    cfg: TrainerConfig
    device: torch.device
    divisor: int = 1

    def rows(self, n: int) -> int:
        return max(1, n // self.divisor)

    def generator(self, seed: int = 0) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def seq_len(self, component: str) -> int:
        c = getattr(self.cfg.training, component)
        if c.seq_len is not None:
            return c.seq_len
        return self.agent.config.actor_critic.burn_in + 1

    def batch(self, component: str, seed: int = 0) -> Batch:
        """A synthetic batch of the component's shape (random frames and actions, no padding)."""
        c = getattr(self.cfg.training, component)
        return synthetic_batch(
            self.rows(c.batch_size), self.seq_len(component), self.agent.config.num_actions, self.device, seed
        )


def synthetic_batch(b: int, t: int, num_actions: int, device: torch.device, seed: int = 0) -> Batch:
    """B segments of T random frames in [0, 1] and random actions on ``device`` (no padding, no ends)."""
    g = torch.Generator(device=device).manual_seed(seed)
    obs = torch.rand(b, t, 3, 64, 64, generator=g, device=device)
    act = torch.randint(0, num_actions, (b, t), generator=g, device=device)
    rew = torch.randint(-1, 2, (b, t), generator=g, device=device).float()
    zeros = torch.zeros(b, t, dtype=torch.uint8, device=device)
    return Batch(
        obs=obs,
        act=act,
        rew=rew,
        end=zeros,
        trunc=zeros.clone(),
        mask_padding=torch.ones(b, t, dtype=torch.bool, device=device),
        episode_id=torch.zeros(b, dtype=torch.long, device=device),
        start=torch.zeros(b, dtype=torch.long, device=device),
        stop=torch.full((b,), t, dtype=torch.long, device=device),
    )


@contextlib.contextmanager
def _strict_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 while comparing two fp32 paths: NHWC and NCHW convolutions pick different cuDNN
    algorithms, whose TF32 rounding would differ far beyond fp32 tolerances."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


# -- applicability ----------------------------------------------------------------------------------------
def _kernels_in_use(op: str) -> str | None:
    """Why the run does not use ``op``'s kernel (None when it does, given CUDA inputs)."""
    backend = ops.requested_backend(None)
    if backend == "torch":
        return "DELTAIRIS_BACKEND=torch"
    if op in ops.kernels_switched_off():
        return "its kernel is switched off for this process (it failed a preflight check)"
    if not ops.triton_available():
        return "Triton is not installed"
    if op == "attention" and backend == "auto":
        return (
            "backend auto uses PyTorch's SDPA for full attention (DELTAIRIS_BACKEND=triton uses the kernel)"
        )
    return None


def _frame_cnn_flags(agent: nn.Module) -> tuple[bool, bool]:
    """(any frame CNN channels_last, any FrameLayers fused_norm) of the agent."""
    layout = any(m.channels_last for m in agent.modules() if isinstance(m, (FrameEncoder, FrameDecoder)))
    fused = any(m.fused_norm for m in agent.modules() if isinstance(m, FrameLayers))
    return layout, fused


# -- kernel checks ----------------------------------------------------------------------------------------
def _check_attention(ctx: Context) -> str:
    reason = _kernels_in_use("attention")
    if reason:
        raise NotApplicable(reason)
    tcfg = ctx.agent.config.world_model.transformer
    b = ctx.rows(ctx.cfg.training.world_model.batch_size)
    t = min(ctx.seq_len("world_model") * tcfg.tokens_per_block, tcfg.max_tokens)
    h, d = tcfg.num_heads, tcfg.embed_dim // tcfg.num_heads
    g = ctx.generator(1)
    q, k, v = (torch.randn(b, h, t, d, generator=g, device=ctx.device).requires_grad_() for _ in range(3))
    kw = {"mask": tcfg.attention, "block_size": tcfg.tokens_per_block}
    out = ops.attention(q, k, v, **kw)
    ref = ops.attention_ref(q, k, v, **kw)
    _check_rel("output", out, ref, 1e-4)
    grad = torch.randn(out.shape, generator=g, device=ctx.device)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q, k, v), grad)
    scale = max(w.abs().max().item() for w in want)
    for name, a, w in zip("qkv", got, want):
        _check_rel(f"d{name}", a, w, 1e-4, scale)
    return f"(B, H, T, D) = {(b, h, t, d)}, {tcfg.attention}, forward and backward"


def _check_attention_kvcache(ctx: Context) -> str:
    reason = _kernels_in_use("attention_kvcache")
    if reason:
        raise NotApplicable(reason)
    wcfg = ctx.agent.config.world_model
    tcfg = wcfg.transformer
    b = ctx.rows(ctx.cfg.training.actor_critic.batch_size)
    h, d, tmax = tcfg.num_heads, tcfg.embed_dim // tcfg.num_heads, tcfg.max_tokens
    burn = (ctx.agent.config.actor_critic.burn_in) * (wcfg.tokens_per_frame + 2) - 1
    g = ctx.generator(2)
    shapes = []
    for tq in sorted({1, 3, max(1, min(burn, tmax))}):
        lens = torch.randint(0, tmax - tq + 1, (b,), generator=g, device=ctx.device).to(torch.int32)
        lens[0] = 0
        q, kn, vn = (torch.randn(b, h, tq, d, generator=g, device=ctx.device) for _ in range(3))
        kc, vc = (torch.randn(b, h, tmax, d, generator=g, device=ctx.device) for _ in range(2))
        kc_ref, vc_ref = kc.clone(), vc.clone()
        kw = {"mask": tcfg.attention, "block_size": tcfg.tokens_per_block}
        with torch.no_grad():
            out = ops.attention_kvcache(q, kn, vn, kc, vc, lens, **kw)
            ref = ops.attention_kvcache_ref(q, kn, vn, kc_ref, vc_ref, lens, **kw)
        _check_rel(f"output (Tq={tq})", out, ref, 1e-4)
        if not (torch.equal(kc, kc_ref) and torch.equal(vc, vc_ref)):
            raise Mismatch(f"cache contents differ from the reference's (Tq={tq})")
        shapes.append(tq)
    return f"B={b}, H={h}, D={d}, cache {tmax}, Tq in {shapes}"


def _check_sample_categorical(ctx: Context) -> str:
    if reason := _kernels_in_use("sample_categorical"):
        raise NotApplicable(reason)
    cfg = ctx.agent.config
    b = ctx.rows(ctx.cfg.training.actor_critic.batch_size)
    widths = sorted(
        {cfg.world_model.latent_vocab_size, cfg.num_actions, cfg.world_model.num_reward_classes, 2}
    )
    g = ctx.generator(3)
    for v in widths:
        logits = torch.randn(b, v, generator=g, device=ctx.device) * 3
        for offset in (7, torch.full((1,), 7, dtype=torch.int64, device=ctx.device)):
            for row_offset in (0, b):
                got = ops.sample_categorical(logits, seed=11, offset=offset, row_offset=row_offset)
                want = ops.sample_categorical_ref(logits, seed=11, offset=offset, row_offset=row_offset)
                if not torch.equal(got, want):
                    n = int((got != want).sum())
                    raise Mismatch(f"{n} of {b} samples differ from the reference's (V={v})")
    return f"B={b}, V in {widths}, int and tensor offsets: samples equal"


def _check_twohot_expectation(ctx: Context) -> str:
    if reason := _kernels_in_use("twohot_expectation"):
        raise NotApplicable(reason)
    cfg = ctx.agent.config
    b = ctx.rows(ctx.cfg.training.actor_critic.batch_size)
    heads = [(cfg.actor_critic.num_value_buckets, cfg.actor_critic.bucket_low, cfg.actor_critic.bucket_high)]
    if cfg.world_model.two_hot_rewards:
        heads.append(
            (cfg.world_model.num_reward_buckets, cfg.world_model.bucket_low, cfg.world_model.bucket_high)
        )
    g = ctx.generator(4)
    for k, low, high in heads:
        logits = torch.randn(b, k, generator=g, device=ctx.device) * 4
        got = ops.twohot_expectation(logits, low=low, high=high)
        want = ops.twohot_expectation_ref(logits, low=low, high=high)
        if got.shape != want.shape:
            raise Mismatch(f"shape {tuple(got.shape)} != reference {tuple(want.shape)}")
        # the GPU tests' criterion: compiled exp is approximate, compare in symlog space
        err = (symlog(got.double()) - symlog(want.double())).abs().max().item()
        if not err <= 2e-5:
            raise Mismatch(f"max |symlog(kernel) - symlog(reference)| = {err:.3g} > 2e-05 ({k} buckets)")
    return f"B={b}, buckets {[h[0] for h in heads]}"


def _norm_shapes(ctx: Context) -> list[tuple[str, int, int, int, int]]:
    """(component, C, H, W, groups) of every GroupNorm+SiLU pair of the agent's frame CNNs, found by one
    single-frame forward of each CNN with the plain layers (no grad)."""
    agent = ctx.agent
    found: dict[tuple[str, int, int, int, int], None] = {}
    owners = {
        "tokenizer": agent.tokenizer,
        "world_model": agent.world_model,
        "actor_critic": agent.actor_critic,
    }
    for owner, module in owners.items():
        for cnn in (m for m in module.modules() if isinstance(m, (FrameEncoder, FrameDecoder))):
            norms = []
            for layers in (m for m in cnn.modules() if isinstance(m, FrameLayers)):
                mods = list(layers)
                norms += [
                    m
                    for m, nxt in itertools.pairwise(mods)
                    if type(m) is nn.GroupNorm and type(nxt) is nn.SiLU
                ]

            def record(mod: nn.Module, args: tuple[torch.Tensor, ...], owner: str = owner) -> None:
                found.setdefault((owner, *args[0].shape[1:], mod.num_groups), None)

            hooks = [m.register_forward_pre_hook(record) for m in norms]
            saved = _frame_cnn_state(cnn)
            try:
                set_frame_cnn_options(cnn, fused_norm=False)
                c = cnn.config
                if isinstance(cnn, FrameEncoder):
                    x = torch.zeros(1, c.image_channels, 64, 64, device=ctx.device)
                else:
                    res = 64 // c.downsampling
                    x = torch.zeros(1, c.latent_dim, res, res, device=ctx.device)
                with torch.no_grad():
                    cnn(x)
            finally:
                _restore_frame_cnn_state(saved)
                for hk in hooks:
                    hk.remove()
    return list(found)


def _norm_run(
    fn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    groups: int,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dy: torch.Tensor,
) -> list[torch.Tensor | None]:
    """Output and (dx, dweight, dbias) of ``fn`` for the output gradient ``dy``."""
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(xs, groups, ws, bs)
    (y.float() * dy.float()).sum().backward()
    return [y, xs.grad, ws.grad, bs.grad]


def _check_group_norm_silu(ctx: Context) -> str:
    if reason := _kernels_in_use("group_norm_silu"):
        raise NotApplicable(reason)
    layout, fused = _frame_cnn_flags(ctx.agent)
    if not fused:
        raise NotApplicable("fused_norm is off in every frame CNN")
    g = ctx.generator(5)
    checked = []
    for owner, c, h, w, groups in _norm_shapes(ctx):
        n = ctx.rows(getattr(ctx.cfg.training, owner).batch_size) * ctx.seq_len(owner)
        dtypes = [torch.float32]
        if owner != "actor_critic" and getattr(ctx.cfg.training, owner).mixed_precision:
            dtypes.append(torch.bfloat16)
        for dtype in dtypes:
            x = (torch.randn(n, c, h, w, generator=g, device=ctx.device) * 2 + 0.7).to(dtype)
            if layout:
                x = x.contiguous(memory_format=torch.channels_last)
            weight = torch.randn(c, generator=g, device=ctx.device) * 0.5 + 1
            bias = torch.randn(c, generator=g, device=ctx.device) * 0.5
            dy = torch.randn(x.shape, generator=g, device=ctx.device).to(dtype)

            got = _norm_run(ops.group_norm_silu, x, groups, weight, bias, dy)
            want = _norm_run(ops.group_norm_silu_ref, x.float(), groups, weight, bias, dy)
            tol = (1e-4, 1e-4) if dtype == torch.float32 else (2e-2, 2e-2)
            wtol = (1e-3, 1e-3) if dtype == torch.float32 else (2e-2, 1e-1)
            what = f"{owner} ({n}, {c}, {h}, {w}) {str(dtype).replace('torch.', '')}"
            _check_close(f"output {what}", got[0], want[0], *tol)
            _check_close(f"dx {what}", got[1], want[1], *tol)
            _check_close(f"dweight {what}", got[2], want[2], *wtol)
            _check_close(f"dbias {what}", got[3], want[3], *wtol)
        checked.append((owner, n, c, h, w))
    return f"{len(checked)} shapes, {'channels_last' if layout else 'contiguous'}, forward and backward"


# -- model-level checks -----------------------------------------------------------------------------------
def _model_outputs(ctx: Context) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Losses / outputs of the three models on the run's batches, and the gradients of all parameters."""
    agent = ctx.agent
    agent.zero_grad(set_to_none=True)
    outs = []
    tb = ctx.batch("tokenizer", seed=21)
    loss = agent.tokenizer.compute_loss(tb).loss
    loss.backward()
    outs.append(loss.detach())
    del tb, loss
    wb = ctx.batch("world_model", seed=22)
    loss = agent.world_model.compute_loss(wb, agent.tokenizer).loss
    loss.backward()
    outs.append(loss.detach())
    del wb, loss
    ab = ctx.batch("actor_critic", seed=23)
    ac = agent.actor_critic
    state = ac.model.burn_in(ab.obs[:, :-1])
    out = ac.model(ab.obs[:, -1], state)
    (out.logits.square().sum() + out.value_logits.square().sum() + state[0].square().sum()).backward()
    outs += [out.logits.detach(), out.value_logits.detach(), state[0].detach()]
    return outs, _grads(list(agent.parameters()))


def _check_frame_cnn(ctx: Context) -> str:
    layout, fused = _frame_cnn_flags(ctx.agent)
    if not (layout or fused):
        raise NotApplicable("channels_last and fused_norm are off in every frame CNN")
    saved = _frame_cnn_state(ctx.agent)
    try:
        with _strict_fp32(ctx.device):
            set_frame_cnn_options(ctx.agent, channels_last=False, fused_norm=False)
            plain, plain_g = _model_outputs(ctx)
            _restore_frame_cnn_state(saved)
            fast, fast_g = _model_outputs(ctx)
    finally:
        _restore_frame_cnn_state(saved)
        ctx.agent.zero_grad(set_to_none=True)
    names = ["tokenizer loss", "world-model loss", "policy logits", "value logits", "burn-in state"]
    # tests/ops/test_groupnorm.py (GPU): frame CNNs with both fast paths vs the plain layers, fp32
    for name, a, b in zip(names, fast, plain):
        _check_close(name, a, b, 1e-3, 1e-3)
    params = [n for n, _ in ctx.agent.named_parameters()]
    for name, a, b in zip(params, fast_g, plain_g):
        _check_close(f"gradient of {name}", a, b, 1e-2, 1e-2)
    what = [w for w, on in (("channels_last", layout), ("fused GroupNorm+SiLU", fused)) if on]
    return f"{' + '.join(what)}: three models' outputs and gradients match the plain layers"


def _check_cuda_graphs(ctx: Context) -> str:
    acfg = ctx.agent.config.actor_critic
    if not (acfg.cuda_graphs or acfg.cuda_graph_rollout):
        raise NotApplicable("actor_critic.cuda_graphs and cuda_graph_rollout are off")
    agent = ctx.agent
    ac, tok, wm = agent.actor_critic, agent.tokenizer, agent.world_model
    batch = ctx.batch("actor_critic", seed=31)
    params = list(ac.model.parameters())
    results = []
    for fast in (True, False):
        ac.zero_grad(set_to_none=True)
        if fast:  # what the trainer builds from the config
            out = ActorCriticLoss(ac, tok, wm)(batch, 12345)
        else:  # the eager reference: the same env settings without graphs
            env = WorldModelEnv(tok, wm, cuda_graphs=False, bf16=acfg.imagination_bf16)
            out = actor_critic_loss(ac, batch, env, 12345, rollout=acfg.cuda_graph_rollout)
        out.loss.backward()
        results.append((out.loss.detach(), _grads(params)))
    ac.zero_grad(set_to_none=True)
    (loss_g, grads_g), (loss_e, grads_e) = results
    # tests/rl/test_rollout.py: same samples, so the loss and gradients equal the eager ones to rounding
    _check_close("actor-critic loss", loss_g, loss_e, 1e-5, 1e-6)
    for (name, _), a, b in zip(ac.model.named_parameters(), grads_g, grads_e):
        _check_close(f"gradient of {name}", a, b, 1e-4, 1e-6)
    kind = "whole-rollout graph" if acfg.cuda_graph_rollout else "per-step graphs"
    bf16 = ", bf16 imagination" if acfg.imagination_bf16 else ""
    return f"{kind}{bf16}: B={batch.batch_size}, horizon {acfg.horizon}, loss and gradients match eager"


def _check_bf16(component: str) -> Callable[[Context], str]:
    def check(ctx: Context) -> str:
        if not getattr(ctx.cfg.training, component).mixed_precision:
            raise NotApplicable(f"training.{component}.mixed_precision is off")
        agent = ctx.agent
        module = getattr(agent, component)
        params = [p for p in module.parameters() if p.requires_grad]
        batch = ctx.batch(component, seed=41)
        runs = []
        try:
            for bf16 in (True, False):
                agent.zero_grad(set_to_none=True)
                with torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=bf16):
                    if component == "tokenizer":
                        loss = agent.tokenizer.compute_loss(batch).loss
                    else:
                        loss = agent.world_model.compute_loss(batch, agent.tokenizer).loss
                loss.backward()
                runs.append((loss.detach().float(), _grads(params)))
        finally:
            agent.zero_grad(set_to_none=True)
        (loss_b, grads_b), (loss_f, grads_f) = runs
        if not bool(torch.isfinite(loss_b)) or not all(bool(torch.isfinite(g).all()) for g in grads_b):
            raise Mismatch("the bf16 loss or a gradient is not finite")
        # tests/ops/test_groupnorm.py (GPU, bf16 autocast vs fp32): 5e-2, gradients 10x that
        _check_close("loss", loss_b, loss_f, 5e-2, 5e-2)
        names = [n for n, p in module.named_parameters() if p.requires_grad]
        for name, a, b in zip(names, grads_b, grads_f):
            _check_close(f"gradient of {name}", a, b, 5e-1, 5e-1)
        losses = f"loss {loss_b.item():.4g} (bf16) vs {loss_f.item():.4g} (fp32)"
        return f"B={batch.batch_size}, T={batch.seq_len}: {losses}"

    return check


#: name -> check; a check returns a detail on success, raises :class:`NotApplicable` or fails by raising.
CHECKS: dict[str, Callable[[Context], str]] = {
    "triton.attention": _check_attention,
    "triton.attention_kvcache": _check_attention_kvcache,
    "triton.sample_categorical": _check_sample_categorical,
    "triton.twohot_expectation": _check_twohot_expectation,
    "triton.group_norm_silu": _check_group_norm_silu,
    "frame_cnn": _check_frame_cnn,
    "cuda_graphs": _check_cuda_graphs,
    "bf16.tokenizer": _check_bf16("tokenizer"),
    "bf16.world_model": _check_bf16("world_model"),
}


# -- fallbacks --------------------------------------------------------------------------------------------
def _frame_cnn_state(agent: nn.Module) -> list[tuple[nn.Module, str, bool]]:
    out: list[tuple[nn.Module, str, bool]] = []
    for m in agent.modules():
        if isinstance(m, (FrameEncoder, FrameDecoder)):
            out.append((m, "channels_last", m.channels_last))
        if isinstance(m, FrameLayers):
            out.append((m, "fused_norm", m.fused_norm))
    return out


def _restore_frame_cnn_state(state: list[tuple[nn.Module, str, bool]]) -> None:
    for m, attr, value in state:
        setattr(m, attr, value)


def fallback_of(name: str) -> str:
    """What switching the fast path ``name`` off does (for the warning and the docs)."""
    if name in ("triton.group_norm_silu",):
        return "fused_norm=False in every frame CNN"
    if name in KERNEL_PATHS:
        return f"the PyTorch reference of {name.split('.', 1)[1]} for this process (the other kernels stay on)"
    if name == "frame_cnn":
        return "channels_last=False, fused_norm=False in every frame CNN"
    if name == "cuda_graphs":
        return "the actor-critic imagines eagerly (no CUDA graphs)"
    if name.startswith("bf16."):
        return f"training.{name.split('.', 1)[1]}.mixed_precision=False"
    raise ValueError(f"unknown fast path {name!r}; expected one of {FAST_PATHS}")


def _switch_off(
    name: str, agent: nn.Module, cfg: TrainerConfig, actor_critic_loss: ActorCriticLoss | None
) -> Callable[[], None]:
    """Switch the fast path ``name`` off; returns what undoes it."""
    if name == "triton.group_norm_silu" or name == "frame_cnn":
        saved = _frame_cnn_state(agent)
        if name == "frame_cnn":
            set_frame_cnn_options(agent, channels_last=False, fused_norm=False)
        else:
            set_frame_cnn_options(agent, fused_norm=False)
        return lambda: _restore_frame_cnn_state(saved)
    if name in KERNEL_PATHS:
        return ops.switch_off_kernel(name.split(".", 1)[1])
    if name == "cuda_graphs":
        if actor_critic_loss is None:
            return lambda: None
        loss = actor_critic_loss
        saved_graphs = (loss.graph_rollout, loss.env.cuda_graphs)
        loss.graph_rollout = False  # the env keeps its bf16 setting: the eager path has the same numerics
        loss.env.cuda_graphs = False  # graphs captured before (none, before training) are no longer replayed

        def undo_graphs() -> None:
            loss.graph_rollout, loss.env.cuda_graphs = saved_graphs

        return undo_graphs
    if name.startswith("bf16."):
        section = getattr(cfg.training, name.split(".", 1)[1])
        section.mixed_precision = False
        return lambda: setattr(section, "mixed_precision", True)
    raise ValueError(f"unknown fast path {name!r}; expected one of {FAST_PATHS}")


def apply_fallbacks(
    results: Iterable[FastPathResult],
    agent: nn.Module,
    cfg: TrainerConfig,
    actor_critic_loss: ActorCriticLoss | None = None,
) -> list[str]:
    """Switch off every failed fast path for this run (one warning each, naming it and its error).

    ``cfg`` is changed in place (``training.<c>.mixed_precision``), so call this after the run's config
    has been saved (a resumed run checks its fast paths again). ``actor_critic_loss``: the trainer's
    actor-critic loss, whose env then steps eagerly (a loss built later from the agent config would
    still use graphs: give the one the run uses). Returns the names switched off.
    """
    off = []
    for r in results:
        if not r.failed:
            continue
        _switch_off(r.name, agent, cfg, actor_critic_loss)
        logger.warning(
            "fast path %s %s; switched off for this run: %s", r.name, r.status, fallback_of(r.name)
        )
        off.append(r.name)
    return off


# -- running ----------------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _error_text(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, Mismatch):
        text = f"{type(exc).__name__}: {text}"
    return text[:300]


def _run_one(name: str, check: Callable[[Context], str], ctx: Context) -> FastPathResult:
    ctx.divisor = 1
    while True:
        try:
            detail = check(ctx)
        except NotApplicable as exc:
            return FastPathResult(name, NOT_APPLICABLE, str(exc))
        except Exception as exc:  # noqa: BLE001 - any error of a fast path switches it off
            if _is_oom(exc) and ctx.divisor < 4096:  # not the path's fault: retry on half the batch
                ctx.agent.zero_grad(set_to_none=True)
                if ctx.device.type == "cuda":
                    torch.cuda.empty_cache()
                ctx.divisor *= 2
                continue
            return FastPathResult(name, f"failed: {_error_text(exc)}", "")
        if ctx.divisor > 1:
            detail += f" (on 1/{ctx.divisor} of the batch: the full batch ran out of memory here)"
        return FastPathResult(name, OK, detail)


@contextlib.contextmanager
def _unchanged(agent: nn.Module, device: torch.device) -> Iterator[None]:
    """Modes, gradients and random states as they were (the checks draw from private generators, but the
    models may draw from the global ones)."""
    modes = [(m, m.training) for m in agent.modules()]
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        agent.eval()  # eval: the tokenizer's codebook does not move between two compared runs
        try:
            yield
        finally:
            for m, training in modes:
                m.training = training
            agent.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.empty_cache()


def run_preflight(
    agent: Agent,
    cfg: TrainerConfig,
    device: torch.device | str,
    paths: Sequence[str] | None = None,
) -> list[FastPathResult]:
    """Check every fast path (or those named in ``paths``) once on ``device``; one result per path.

    Not a CUDA device: every path is ``not applicable`` and nothing runs. Nothing of the agent or ``cfg``
    is changed (see the module doc); switching failed paths off is :func:`apply_fallbacks`.
    """
    device = torch.device(device)
    names = list(FAST_PATHS if paths is None else paths)
    for n in names:
        if n not in CHECKS:
            raise ValueError(f"unknown fast path {n!r}; expected one of {FAST_PATHS}")
    if not fast_paths_active(device):
        return [
            FastPathResult(n, NOT_APPLICABLE, f"fast paths are used only on CUDA (device {device})")
            for n in names
        ]
    ctx = Context(agent, cfg, device)
    results: list[FastPathResult] = []
    undo: list[Callable[[], None]] = []
    t0 = time.perf_counter()
    try:
        with _unchanged(agent, device):
            for n in names:
                t = time.perf_counter()
                r = _run_one(n, CHECKS[n], ctx)
                if r.status == OK:
                    r = dataclasses.replace(r, detail=f"{r.detail} [{time.perf_counter() - t:.2f}s]")
                results.append(r)
                if r.failed:  # the later checks run as the run will: without this path
                    undo.append(_switch_off(n, agent, cfg, None))
    finally:
        for u in reversed(undo):
            u()
    logger.info("preflight of %d fast paths took %.1fs", len(names), time.perf_counter() - t0)
    return results


def preflight(
    agent: Agent,
    cfg: TrainerConfig,
    device: torch.device | str,
    actor_critic_loss: ActorCriticLoss | None = None,
) -> list[FastPathResult]:
    """:func:`run_preflight`, then :func:`apply_fallbacks` on its results; returns the results."""
    results = run_preflight(agent, cfg, device)
    apply_fallbacks(results, agent, cfg, actor_critic_loss)
    return results


def summary(results: Iterable[FastPathResult]) -> dict[str, object]:
    """The results for metrics.jsonl / the run's config: ``{"preflight": [{name, status, detail}, ...]}``."""
    return {"preflight": [r.as_dict() for r in results]}


__all__ = [
    "CHECKS",
    "FAST_PATHS",
    "KERNEL_PATHS",
    "NOT_APPLICABLE",
    "OK",
    "Context",
    "FastPathResult",
    "Mismatch",
    "NotApplicable",
    "apply_fallbacks",
    "fallback_of",
    "fast_paths_active",
    "preflight",
    "run_preflight",
    "summary",
    "synthetic_batch",
]
