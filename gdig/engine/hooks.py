"""Capture per-token input activations a_t and output gradients g_t of the tracked modules, batch by batch.

All model parameters are frozen: autograd records the graph from the embedding output on, and
`torch.autograd.grad` asks only for the gradients of the tracked modules' outputs, so no weight gradient is
ever formed and backward stops at the earliest tracked module. The loss is the sum over the batch of each
example's mean target-token loss, so d(loss)/d(output at a position of z) is exactly g_t of L(z).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from gdig.inputs.data import IGNORE_INDEX, TokenizedExample
from gdig.inputs.model import TrackedModule, accepts_position_ids

# Families whose logits are exactly lm_head(base(x).last_hidden_state) (after an optional final soft-cap): for
# these the head runs only at the labelled positions, where the loss is taken. Others use the full forward.
LABELLED_HEAD_FAMILIES = {"llama", "mistral", "qwen2", "qwen3", "gemma", "gpt2", "bloom", "gpt_neox", "opt"}


@dataclass
class Batch:
    """Padded token ids, labels and mask of a few examples, with their indices in the dataset."""

    index: list[int]  # positions of these examples in the dataset
    input_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor  # (B, T)
    labels: torch.Tensor  # (B, T)


def keeps_gradient(tokens: int, d_in: int, d_out: int) -> bool:
    """Whether a module's per-example gradient (d_out d_in numbers) is smaller than its T captured tokens
    (T (d_in + d_out)): a LoRA matrix (rank r on one side), or a small layer and long examples. Such a module's
    gradient is formed once per batch and every product with a candidate starts from it (the rotation, the
    scores, the sketch), and a capture kept for a later pass holds it instead of the tokens."""
    return d_in * d_out < tokens * (d_in + d_out)


@dataclass
class Captured:
    """What one batch yields: per-example loss and target-token count, per-module a and g (float32, masked), and
    the per-example gradients of the modules that work from them (keeps_gradient), formed on first use."""

    index: list[int]
    loss: torch.Tensor  # (B,)
    n_target: torch.Tensor  # (B,)
    mask: torch.Tensor  # (B, T) float, 1 at non-padding positions
    acts: dict[str, torch.Tensor]  # name -> (B, T, d_in); one tensor for the modules of same_input: never written
    grads: dict[str, torch.Tensor]  # name -> (B, T, d_out)
    weight_grads: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, d_out, d_in)
    same_input: dict[str, str] = field(default_factory=dict)  # name -> the first module that read the same input
    # name -> (B, d_out, d_in) in the curvature's eigenbasis, kept in place of the gradient (keep_rotation); None:
    # this capture keeps none
    rotations: dict[str, torch.Tensor] | None = None
    sketch: torch.Tensor | None = None  # (B, k) the sketch columns of its modules, made before any gradient went

    def gradient(self, name: str) -> torch.Tensor | None:
        """Module `name`'s per-example gradients (B, d_out, d_in) when it works from them (keeps_gradient),
        formed once per batch; None when it works from its tokens."""
        if name not in self.weight_grads:
            if self.rotation(name) is not None:
                raise RuntimeError(f"{name}: this capture keeps its gradient only in the eigenbasis")
            a, g = self.acts[name], self.grads[name]
            if not keeps_gradient(a.shape[1], a.shape[-1], g.shape[-1]):
                return None
            self.weight_grads[name] = per_example_gradient(a, g)
        return self.weight_grads[name]

    def works_from_gradient(self, name: str) -> bool:
        """Whether module `name` works from its per-example gradient (formed, or kept rotated), not its tokens."""
        return name in self.weight_grads or self.rotation(name) is not None

    def rotation(self, name: str) -> torch.Tensor | None:
        """Module `name`'s gradient in the eigenbasis, when this capture keeps it (keep_rotation)."""
        return None if self.rotations is None else self.rotations.get(name)

    def keep_rotation(self, name: str, rot: torch.Tensor) -> None:
        """Keep module `name`'s rotated gradient in place of its gradient, where this capture keeps rotations
        (`rotations` not None) and the module works from its gradient: a later pass that rotates it again would
        repeat the same product (its tokens, where it works from them, stay: smaller than the rotation)."""
        if self.rotations is not None and name in self.weight_grads:
            self.rotations[name] = rot
            del self.weight_grads[name]

    def compact(self) -> Captured:
        """This batch as a later pass needs it, in the least memory: each module's per-example gradient where
        it works from that, else its tokens."""
        grads = {name: self.gradient(name) for name in dict.fromkeys([*self.acts, *self.weight_grads])}
        tokens = [name for name, grad in grads.items() if grad is None]
        return Captured(
            self.index,
            self.loss,
            self.n_target,
            self.mask,
            {name: self.acts[name] for name in tokens},
            {name: self.grads[name] for name in tokens},
            {name: grad for name, grad in grads.items() if grad is not None},
            self.same_input,
        )


def collate(
    examples: Sequence[TokenizedExample], index: Sequence[int], pad_id: int, padding_side: str = "right"
) -> Batch:
    """Pad examples into one Batch (right or left); padding never counts in any statistic."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(width - n, width) if padding_side == "left" else slice(0, n)
        ids[row, sl] = torch.tensor(e.input_ids)
        mask[row, sl] = 1
        labels[row, sl] = torch.tensor(e.labels)
    return Batch(list(index), ids, mask, labels)


def batch_groups(lengths: Sequence[int], batch_size: int, token_budget: int | None = None) -> list[list[int]]:
    """Positions of `lengths` grouped into batches, in order: batch_size at a time, or with a token budget as
    many as fit in `token_budget` padded tokens. The one batching rule (make_batches, the memory plan)."""
    groups: list[list[int]] = []
    group: list[int] = []
    width = 0
    for pos, n in enumerate(lengths):
        new_width = max(width, n)
        full = len(group) >= batch_size if token_budget is None else new_width * (len(group) + 1) > token_budget
        if group and full:
            groups.append(group)
            group, new_width = [], n
        group.append(pos)
        width = new_width
    return groups + ([group] if group else [])


def padded_batches(lengths: Sequence[int], batch_size: int, token_budget: int | None = None) -> list[int]:
    """Padded tokens of each batch, for lengths already in batch order."""
    return [max(lengths[p] for p in g) * len(g) for g in batch_groups(lengths, batch_size, token_budget)]


def make_batches(
    examples: Sequence[TokenizedExample],
    order: Sequence[int],
    pad_id: int,
    batch_size: int,
    token_budget: int | None = None,
    padding_side: str = "right",
) -> Iterator[Batch]:
    """Batches over `order`, grouped by batch_groups."""
    for idx in batch_indices(examples, order, batch_size, token_budget):
        yield collate([examples[j] for j in idx], idx, pad_id, padding_side)


def batch_indices(
    examples: Sequence[TokenizedExample], order: Sequence[int], batch_size: int, token_budget: int | None = None
) -> list[list[int]]:
    """The example indices of each batch over `order` (batch_groups' positions mapped back to examples)."""
    order = list(order)
    groups = batch_groups([len(examples[i].input_ids) for i in order], batch_size, token_budget)
    return [[order[p] for p in group] for group in groups]


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean next-token cross-entropy over each example's labelled tokens (HF shift), and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    tok_loss = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    valid = (shift_labels != IGNORE_INDEX).float()
    n = valid.sum(1)
    return (tok_loss * valid).sum(1) / n.clamp(min=1), n


class GradientCapture:
    """Context manager: hooks on the tracked modules; `run(batch)` returns their a_t and g_t."""

    def __init__(
        self, model: nn.Module, tracked: Sequence[TrackedModule], every: Sequence[TrackedModule] | None = None
    ):
        """`every`: the run's tracked modules when `tracked` is one group of them (gdig.pipeline.partitions), so
        that every group computes the loss the same way, bit for bit."""
        self.model = model
        self.tracked = list(tracked)
        self.device = next(model.parameters()).device
        self._position_ids = accepts_position_ids(model)
        head = model.get_output_embeddings()
        head_tracked = any(t.module is head for t in (every or self.tracked))  # its inputs must then be per position
        self.labelled_head = getattr(model.config, "model_type", None) in LABELLED_HEAD_FAMILIES and not head_tracked
        self._handles: list = []
        self._acts: dict[str, torch.Tensor] = {}
        self._inputs_of: dict[str, torch.Tensor] = {}  # each module's input as called (for same_input)
        self._outs: dict[str, torch.Tensor] = {}
        self._frozen: list[tuple[nn.Parameter, bool]] = []
        # the transformer under the LM head (under a PEFT wrapper, the adapted model's own)
        self._body = getattr(model, "get_base_model", lambda: model)().base_model

    def __enter__(self) -> GradientCapture:
        for p in self.model.parameters():
            self._frozen.append((p, p.requires_grad))
            p.requires_grad_(False)
        emb = self.model.get_input_embeddings()
        self._handles.append(emb.register_forward_hook(lambda m, i, o: o.requires_grad_(True)))
        for t in self.tracked:
            self._handles.append(t.module.register_forward_hook(self._make_hook(t.name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for p, flag in self._frozen:
            p.requires_grad_(flag)
        self._handles, self._frozen = [], []

    def _make_hook(self, name: str):
        def hook(module, inputs, output):
            self._acts[name] = inputs[0].detach()
            self._inputs_of[name] = inputs[0]
            self._outs[name] = output

        return hook

    def _inputs(self, batch: Batch) -> dict:
        ids = batch.input_ids.to(self.device)
        mask = batch.attention_mask.to(self.device)
        kwargs = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
        if self._position_ids:  # left padding must not shift absolute positions (GPT-2, OPT...)
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        return kwargs

    def forward(self, batch: Batch):
        """The model's logits for a batch, with the tracked modules' inputs kept by the hooks."""
        return self.model(**self._inputs(batch)).logits

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean target loss and target count; the head runs at labelled positions when it can."""
        labels = batch.labels.to(self.device)
        if not self.labelled_head:
            return per_example_loss(self.forward(batch), labels)
        hidden = self._body(**self._inputs(batch)).last_hidden_state[:, :-1]
        targets = labels[:, 1:]
        keep = targets != IGNORE_INDEX
        logits = self.model.get_output_embeddings()(hidden[keep]).float()
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        tok_loss = nn.functional.cross_entropy(logits, targets[keep], reduction="none")
        rows = keep.nonzero()[:, 0]
        n = keep.sum(1).float()
        total = torch.zeros(len(n), device=self.device, dtype=tok_loss.dtype).index_add(0, rows, tok_loss)
        return total / n.clamp(min=1), n

    def run(self, batch: Batch) -> Captured:
        """Forward and backward of a batch: per-example losses, a_t and g_t of every tracked module."""
        self._acts, self._outs, self._inputs_of = {}, {}, {}
        with torch.enable_grad():
            loss, n_target = self.loss(batch)
            mask = batch.attention_mask.to(self.device).float()
            names = [t.name for t in self.tracked]
            outs = [self._outs[n] for n in names]
            grads: dict[str, torch.Tensor] = {}
            got = torch.autograd.grad(loss.sum(), outs, allow_unused=True)
            for t, o, g in zip(self.tracked, outs, got, strict=True):
                g = torch.zeros_like(o) if g is None else g
                grads[t.name] = _masked(_per_position(g, mask), mask)
        acts, same_input = self._activations(names, mask)
        self._acts, self._outs, self._inputs_of = {}, {}, {}
        return Captured(batch.index, loss.detach().float(), n_target, mask, acts, grads, same_input=same_input)

    def _activations(self, names: list[str], mask: torch.Tensor) -> tuple[dict, dict[str, str]]:
        """Each module's masked float32 input, made once per input tensor: modules called on the same tensor
        (the q, k and v projections; gate and up; their LoRA A matrices) share one, and same_input names, for
        each of the later ones, the first module that read it."""
        acts, same_input, first = {}, {}, {}
        for n in names:
            earlier = first.setdefault(id(self._inputs_of[n]), n)  # the inputs are alive: their ids are unique
            if earlier != n:
                acts[n], same_input[n] = acts[earlier], earlier
                continue
            acts[n] = _masked(_per_position(self._acts[n], mask), mask)
        return acts, same_input


def _masked(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x (B, T, d) in float32 with its padding positions zeroed, as a fresh tensor. Masking in place was 12% faster
    for SmolLM2's capture but kept the model's own activations alive, and the wide Llama's measured peaks in
    tests/planning/test_plan.py rose 20-27% above the plan."""
    return x.float() * mask[..., None]


def _per_position(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, d) view of a module's input or output; some models (OPT) flatten the batch to (B*T, d)."""
    return x if x.dim() == 3 else x.reshape(*mask.shape, x.shape[-1])


def per_example_gradient(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """grad_W L(z) = sum_t g_t a_t^T, batched: (B, T, d_out) x (B, T, d_in) -> (B, d_out, d_in)."""
    return torch.bmm(g.transpose(1, 2), a)
