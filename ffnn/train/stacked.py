"""S seeds of one spec trained in one pass: seeds as a batch dimension.

Seed ``s`` starts from exactly the weights that ``train.train`` gives it
(``models.seeded_model``) and sees exactly its batch order (a CPU generator
seeded with ``s``, one ``randperm`` per epoch). Layer ``l`` of the stack is a
``(S, out, in)`` weight and a ``(S, out, 1)`` bias, applied with one
``baddbmm``. The backward pass is written out (no autograd): each seed's
gradient is that of its own batch-mean loss, scaled by its own learning rate,
and each layer's update is one fused ``W -= G H^T`` per seed, so no value
crosses from one seed to another. The learning rate is a per-seed vector.

Losses stay on the device in an ``(iters, S)`` buffer and are read at
evaluation points only. There every new loss is checked against the divergence
rule: a seed whose loss was not finite, or stayed above the threshold for a
whole window, is reported failed with the first step that broke the rule and
the reason, and frozen (its updates masked out) from then on; the other seeds
go on. Since no value crosses from one seed to another, the steps a seed took
between its divergence and that check change nothing but its own discarded
weights. On CUDA the whole step (batch gather, forward, per-seed loss,
backward, SGD) is captured once in a CUDA graph and replayed; the CPU runs the
same step eagerly.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import ModelSpec, seeded_model
from .loop import DEFAULT_RULE, DivergenceRule, SeedResult

_ACT = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu}
CHUNK = 64  # floats: a multiple of every CPU vector loop's step


@dataclass
class StackResult:
    """A stack's seeds (each with its share of the wall time) and how the stack ran."""

    seeds: list[SeedResult]
    seconds: float  # wall time of the whole stack, evaluations included
    graph: bool  # the step ran as a replayed CUDA graph


@dataclass(frozen=True)
class StackEval:
    """What ``on_eval`` sees: one evaluation of every seed still training."""

    step: int
    accuracy: list[float]  # per seed, percent; NaN for failed seeds


class _Layers:
    """The forward pass of stacked weights: what a stack and a slice of its seeds share."""

    weights: list[torch.Tensor]  # (S, out, in) per layer
    biases: list[torch.Tensor]  # (S, out, 1) per layer
    act: Callable[[torch.Tensor], torch.Tensor] | None  # None: no hidden layer
    # (S, H, 1) per hidden layer, 1 for a seed's own units and 0 for its padding; None when no padded unit's
    # activation is nonzero (relu and tanh map the padding's 0 to 0)
    masks: list[torch.Tensor] | None = None

    def layers(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's input, feature-major, then the logits: ``x`` (S, B, 784), or (B, 784) shared by every
        seed, gives [x^T, h_1, ..., (S, 10, B)]."""
        hs = [x.transpose(-1, -2)]  # (S, 784, B) or (784, B): the features first
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = hs[-1]
            h = torch.baddbmm(b, w, h) if h.dim() == 3 else torch.matmul(w, h) + b  # (S, out, B)
            if i < last:
                h = self.activate(h)
                if self.masks is not None:
                    h = h.mul_(self.masks[i])
            hs.append(h)
        return hs

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (S, B, 784) or (B, 784) shared by every seed -> (S, B, 10)."""
        return self.layers(x)[-1].transpose(1, 2)

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """The activation of (S, H, B), computed for each seed exactly as it would be alone.

        The CPU kernels of sigmoid and tanh run vectorised in chunks of up to 64 floats and finish
        a tensor's tail with scalar code that can differ in the last bit; each seed's block is
        padded to a multiple of 64 so that no seed's values depend on how many seeds precede it.
        """
        if self.act is None:
            raise ValueError("a model without hidden layers has no activation")
        S, n = h.shape[0], h[0].numel()
        pad = -n % CHUNK
        if self.act is torch.relu:
            return h.relu_()
        if pad == 0 or h.device.type != "cpu":
            return self.act(h)
        return self.act(F.pad(h.reshape(S, n), (0, pad)))[:, :n].view(h.shape)


class _Stack(_Layers):
    """The stacked parameters and the device-side state of one pass."""

    def __init__(self, spec: ModelSpec | Sequence[ModelSpec], seeds: Sequence[int], lrs: Sequence[float],
                 iters: int, device: torch.device):
        specs = [spec] * len(seeds) if isinstance(spec, ModelSpec) else list(spec)
        if len(specs) != len(seeds) or len({(len(s.hidden), s.activation) for s in specs}) != 1:
            raise ValueError("one spec, or one per seed with the same depth and activation")
        models = [seeded_model(sp, s, "cpu") for sp, s in zip(specs, seeds)]
        linears = [[m for m in model if isinstance(m, torch.nn.Linear)] for model in models]
        self.act = _ACT[specs[0].activation] if specs[0].hidden else None
        # seed s's layer l is (out, in) = self.shapes[s][l]; narrower seeds are padded with zeros to the widest,
        # which stay zero: a padded unit's output is 0 (masked where the activation of 0 is not), so neither
        # its weights nor those reading it get a gradient, and a seed's own numbers are those it gets alone
        self.shapes = [[tuple(m.weight.shape) for m in ls] for ls in linears]
        widest = [tuple(max(sh[i][k] for sh in self.shapes) for k in (0, 1)) for i in range(len(linears[0]))]

        def pad(t: torch.Tensor, out: int, inp: int) -> torch.Tensor:  # (o, i) -> (out, inp), zeros beyond
            return F.pad(t, (0, inp - t.shape[1], 0, out - t.shape[0]))

        if any(sh != widest for sh in self.shapes) and self.act is not None and self.act(torch.zeros(1)).item():
            self.masks = [torch.stack([(torch.arange(widest[i][0]) < sh[i][0]).float()[:, None]
                                       for sh in self.shapes]).to(device) for i in range(len(widest) - 1)]
        # feature-major, as nn.Linear keeps them: layer l computes h_l^T = W_l h_{l-1}^T + b_l for each seed,
        # so that each weight's gradient is one (out, B) x (B, in) product per seed. The batch-major
        # form (h W^T, gradient x^T g) ran the products that end in 10 outputs at a fifth of the speed
        # on the CPU: a step of LR took 2.4x as long, of C and E 1.0-1.1x (`torch.bmm`, one thread).
        self.weights = [torch.stack([pad(ls[i].weight.detach(), *widest[i]) for ls in linears]).to(device)
                        for i in range(len(linears[0]))]  # (S, out, in)
        self.biases = [torch.stack([pad(ls[i].bias.detach()[:, None], widest[i][0], 1) for ls in linears]).to(device)
                       for i in range(len(linears[0]))]  # (S, out, 1)
        S = len(seeds)
        self.lr = torch.tensor(list(lrs), dtype=torch.float32, device=device)  # (S,)
        self.alive = torch.ones(S, dtype=torch.bool, device=device)  # False: frozen
        self.all_alive = True  # the host's copy of alive.all(), so that the CPU's step need not ask
        self.losses = torch.zeros(iters, S, dtype=torch.float32, device=device)
        self.t = torch.zeros(1, dtype=torch.int64, device=device)  # steps done
        self.always_mask = device.type == "cuda"

    def params(self) -> list[torch.Tensor]:
        return [p for pair in zip(self.weights, self.biases) for p in pair]

    def backward_activation(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``g``, the gradient at a hidden layer's output ``h``, taken back through its activation: the
        kernels autograd runs (exact arithmetic, so every seed's numbers are those it gets alone)."""
        if self.act is torch.relu:
            return torch.ops.aten.threshold_backward(g, h, 0)
        if self.act is torch.sigmoid:
            return torch.ops.aten.sigmoid_backward(g, h)
        return torch.ops.aten.tanh_backward(g, h)

    @torch.no_grad()
    def step(self, x_train: torch.Tensor, y_train: torch.Tensor, idx: torch.Tensor) -> None:
        """One SGD step of every seed on its own batch ``idx`` (S, B).

        The gradients are written out rather than left to autograd: each layer's weight update is one
        fused ``W -= G H^T`` (``baddbmm_``) per seed, and no graph is built or walked: on the CPU a seed
        of LR, A, C or E takes 0.70-0.78 of autograd's time (5 seeds, one thread). Each seed's loss is
        its batch mean, its gradient scaled by its own learning rate, so no value crosses from one seed
        to another.
        """
        S, B = idx.shape
        flat = idx.reshape(-1)
        x = x_train.index_select(0, flat).view(S, B, -1)
        if x.dtype == torch.uint8:  # pixels as stored: scaled after the gather, exactly as ToTensor does
            x = x.float().div_(255)
        hs = self.layers(x)
        y = y_train.index_select(0, flat).view(S, 1, B)
        # over the classes of (S, 10, B): 5 us against 76 us for the (S, B, 10) kernels here (5 seeds),
        # and each seed's block is computed the same whatever precedes it (tested)
        z = hs.pop()
        loss = torch.log_softmax(z, 1).gather(1, y).view(S, B).mean(1).neg_()  # (S,)
        self.losses.index_copy_(0, self.t, loss[None])  # in place: a CUDA graph replays on what it captured
        self.t += 1
        # d(loss_s)/d(logits) = (softmax - one-hot) / B, times the seed's learning rate
        g = torch.softmax(z, 1).scatter_add_(1, y, torch.full((S, 1, B), -1.0, device=z.device))
        g = g.mul_((self.lr / B).view(S, 1, 1))  # (S, 10, B)
        # A frozen seed's gradients are zeroed at every layer, so its weights stay as they were. On the CPU
        # only while a seed is frozen (the usual case costs nothing); a CUDA graph cannot branch, so always.
        dead = ~self.alive.view(S, 1, 1) if self.always_mask or not self.all_alive else None
        for i in range(len(self.weights) - 1, -1, -1):
            h, w = hs[i], self.weights[i]
            if dead is not None:
                g = g.masked_fill_(dead, 0.0)
                if i > 0:  # a frozen seed's activations may have overflowed: 0 * inf is NaN
                    h = h.masked_fill(dead, 0.0)
            g_in = torch.bmm(w.transpose(1, 2), g) if i > 0 else None  # before w moves
            w.baddbmm_(g, h.transpose(1, 2), alpha=-1)  # w -= g h^T
            self.biases[i].sub_(g.sum(2, keepdim=True))
            if g_in is not None:
                g = self.backward_activation(g_in, h)

    @torch.no_grad()
    def correct(self, x: torch.Tensor, y: torch.Tensor, chunk_bytes: int = 256 << 20) -> torch.Tensor:
        """(S, M) bool: whether each seed classifies each image of ``x`` as ``y``; seeds in chunks to bound memory."""
        S = self.weights[0].shape[0]
        widest = max(w.shape[1] for w in self.weights)
        per_seed = len(x) * widest * 4
        step = max(1, chunk_bytes // per_seed)
        return torch.cat([_Slice(self, lo, min(S, lo + step)).logits(x).argmax(2) == y for lo in range(0, S, step)])

    def accuracy(self, x: torch.Tensor, y: torch.Tensor, chunk_bytes: int = 256 << 20) -> torch.Tensor:
        """(S,) percent of ``x`` classified as ``y`` by each seed."""
        return percent(self.correct(x, y, chunk_bytes))

    def state_dict(self, s: int) -> dict[str, torch.Tensor]:
        """Seed ``s``'s weights under ``nn.Sequential``'s keys (Linear layers at 0, 2, 4, ...)."""
        out = {}
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            o, n = self.shapes[s][i]
            out[f"{2 * i}.weight"] = w[s, :o, :n].detach().cpu()
            out[f"{2 * i}.bias"] = b[s, :o, 0].detach().cpu()
        return out


def percent(correct: torch.Tensor) -> torch.Tensor:
    """(S, M) bool -> (S,) float32 percent true per row, as ``_Stack.accuracy`` reports it, on any device."""
    return correct.sum(1).float() * (100.0 / correct.shape[1])


class _Slice(_Layers):
    """Seeds ``lo:hi`` of a stack, for chunked evaluation."""

    def __init__(self, stack: _Stack, lo: int, hi: int):
        self.weights = [w[lo:hi] for w in stack.weights]
        self.biases = [b[lo:hi] for b in stack.biases]
        self.act = stack.act
        self.masks = None if stack.masks is None else [m[lo:hi] for m in stack.masks]


def _epoch_orders(generators: list[torch.Generator], n: int, device: torch.device) -> torch.Tensor:
    """(S, n): each seed's next epoch order, drawn exactly as ``train.train`` draws it."""
    perms = torch.stack([torch.randperm(n, generator=g) for g in generators])
    return perms.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else perms


class _Graph:
    """The step captured once as a CUDA graph; ``run`` replays it on a fresh batch."""

    def __init__(self, stack: _Stack, x: torch.Tensor, y: torch.Tensor, idx_shape: tuple[int, int]):
        self.idx = torch.zeros(idx_shape, dtype=torch.int64, device=x.device)
        state = [stack.losses, stack.t, stack.alive]
        saved = [t.detach().clone() for t in stack.params() + state]
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up steps, as the CUDA-graph notes ask; undone below
                for _ in range(3):
                    stack.step(x, y, self.idx)
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                stack.step(x, y, self.idx)
        finally:
            with torch.no_grad():
                for dst, v in zip(stack.params() + state, saved):
                    dst.copy_(v)

    def run(self, idx: torch.Tensor) -> None:
        self.idx.copy_(idx, non_blocking=True)
        self.graph.replay()


def train_stacked(
    spec: ModelSpec | Sequence[ModelSpec],  # one for every seed, or one per seed: same depth and activation
    seeds: Sequence[int],
    lrs: Sequence[float],
    batch_size: int,  # examples per optimizer step, per seed
    iters: int,  # optimizer steps per seed
    eval_every: int,  # steps between evaluations; the last step is always evaluated
    x_train: torch.Tensor,  # (N, 784) float in [0, 1], or uint8 pixels (x / 255), on the training device
    y_train: torch.Tensor,  # (N,)
    x_eval: torch.Tensor,  # (M, 784)
    y_eval: torch.Tensor,  # (M,)
    rule: DivergenceRule = DEFAULT_RULE,
    on_eval: Callable[[StackEval], Iterable[int] | None] | None = None,
    use_graph: bool | None = None,  # None: on CUDA when the batches are all full
) -> StackResult:
    """Train ``spec`` once per seed, all seeds at once; evaluate every ``eval_every`` steps. Each seed that
    finishes keeps which eval images its final evaluation got right (``SeedResult.eval_correct``).

    Seeds of narrower specs are padded to the widest and train exactly as alone (tested). ``on_eval`` may
    return the indices of seeds to stop: they are frozen from then on, as a diverged seed is."""
    if len(seeds) != len(lrs):
        raise ValueError("one learning rate per seed")
    device = x_train.device
    n = len(x_train)
    start = time.perf_counter()
    stack = _Stack(spec, seeds, lrs, iters, device)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    if use_graph is None:
        use_graph = device.type == "cuda" and n % batch_size == 0
    graph = None
    results = [SeedResult(s, float(lr)) for s, lr in zip(seeds, lrs)]
    read = 0  # losses read back so far
    above = torch.zeros(len(seeds), dtype=torch.int64)  # each seed's steps above the threshold, up to `read`
    step = 0
    final_correct = None  # (S, M) bool on the CPU, from the evaluation at step == iters
    while step < iters:
        order = _epoch_orders(generators, n, device)
        for lo in range(0, n, batch_size):
            idx = order[:, lo:lo + batch_size]
            if use_graph and graph is None and idx.shape[1] == batch_size:
                try:
                    graph = _Graph(stack, x_train, y_train, (idx.shape[0], idx.shape[1]))
                except RuntimeError as e:  # capture unsupported here: the same step, eagerly
                    warnings.warn(f"CUDA graph capture failed, training eagerly: {e}", stacklevel=2)
                    use_graph = False
            if graph is not None and idx.shape[1] == batch_size:
                graph.run(idx)
            else:
                stack.step(x_train, y_train, idx)
            step += 1
            if step % eval_every == 0 or step == iters:
                if step == iters:  # the final evaluation: which images, read once; the accuracy from those
                    final_correct = stack.correct(x_eval, y_eval).cpu()  # the host reads: here, and only here
                    acc = percent(final_correct)
                else:
                    acc = stack.accuracy(x_eval, y_eval).cpu()  # the host reads: here, and only here
                losses = stack.losses[read:step].cpu()
                first, above = rule.first_break(losses, above)
                for j, r in enumerate(results):
                    if r.failure is not None or r.stopped_step is not None:
                        continue
                    f = int(first[j])
                    bad = losses[f, j].item() if f >= 0 else math.nan  # the loss that broke the rule
                    # a non-finite loss is not logged
                    kept = len(losses) if f < 0 else f if not math.isfinite(bad) else f + 1
                    r.losses.extend((read + k + 1, v) for k, v in enumerate(losses[:kept, j].tolist()))
                    if f < 0:
                        r.history.append((step, float(acc[j])))
                    else:
                        r.failed_step = read + f + 1
                        r.failure = f"diverged: {rule.reason(r.failed_step, bad)}"
                alive = torch.tensor([r.failure is None and r.stopped_step is None for r in results])
                read = step
                if on_eval is not None:
                    stop = on_eval(StackEval(step, [float(a) if alive[j] else math.nan
                                                    for j, a in enumerate(acc.tolist())]))
                    for j in stop or ():
                        if alive[j]:
                            results[j].stopped_step = step
                            alive[j] = False
                if not (stack.all_alive and alive.all()):
                    stack.all_alive = False
                    stack.alive.copy_(alive)  # frozen from the next step on
                if not alive.any():
                    step = iters  # nothing left to train
            if step >= iters:
                break
    seconds = time.perf_counter() - start
    for j, r in enumerate(results):
        r.seconds = seconds / len(results)
        if r.failure is None:
            r.accuracy = r.history[-1][1] if r.history else math.nan
            r.state_dict = stack.state_dict(j)
            if final_correct is not None:
                r.eval_correct = final_correct[j].numpy().copy()
    return StackResult(results, seconds, graph is not None)
