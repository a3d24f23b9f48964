"""How much device memory, host memory and disk each step will need, before anything runs.

A 7B model's EK-FAC factors alone (Llama-2-7B's MLPs: 17.6 billion floats) outgrow an 80 GB GPU,
so a run has to know its peak before it loads weights. The plan needs the model's configuration
only: the model is built on PyTorch's meta device (shapes, no storage), so the tracked layers and
the parameter count are exactly those a real load would give, for any architecture.

Every number is a sum of named parts (`Step.parts`), so a reader sees what dominates. Parts that
pretrace allocates itself (captured activations and gradients, float64 sums, factors, per-example
gradients) are counted exactly; the model's own saved activations are estimated per token from the
configuration (`ACTIVATION_FLOATS`), which is the one approximation; `bench/scale.py` and the
tests measure the whole against real allocations (`pretrace.planning.peak_memory`, or the GPU's allocator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import torch

from pretrace.errors import InputError
from pretrace.influence.capture import LOGITS_CHUNK_TOKENS
from pretrace.influence.ekfac import diagonal_blocks
from pretrace.influence.layer_groups import factor_floats, split_layers
from pretrace.influence.low_rank import CHUNK_NUMBERS
from pretrace.influence.quantization import factor_bytes, row_bytes
from pretrace.model.adapter import DEFAULT_LAYER_PATTERNS, resolve_dtype, select_layers

GB = 1e9
LOGIT_BYTES_PER_VOCAB = 4
"""Per position of a logits chunk (`LOGITS_CHUNK_TOKENS`) and vocabulary entry at the loss: the
float32 logits, turned into their softmax in place. Drawing sampled labels (`fisher: sampled`, the
fitting passes) adds the draw's probabilities and their cumulative sums (`SAMPLING_BYTES_PER_VOCAB`);
a narrower head adds its own output and that output's gradient (`NARROW_HEAD_BYTES_PER_VOCAB`)."""
SAMPLING_BYTES_PER_VOCAB = 8
NARROW_HEAD_BYTES_PER_VOCAB = 4


@dataclass(frozen=True)
class ModelShape:
    """What the plan reads from a model's configuration."""

    parameters: int
    blocks: int
    hidden: int
    kv_hidden: int  # keys and values each (grouped-query attention shrinks them)
    intermediate: int
    vocab: int
    layers: dict[str, tuple[int, int]]  # tracked layer -> (d_out, d_in), bias column included

    @classmethod
    def of_config(cls, config: object, patterns: Sequence[str] = DEFAULT_LAYER_PATTERNS) -> ModelShape:
        """Build the model on the meta device (no memory, no weights) and read its shapes."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return cls.of_model(model, config, patterns)

    @classmethod
    def of_model(
        cls, model: torch.nn.Module, config: object, patterns: Sequence[str] = DEFAULT_LAYER_PATTERNS
    ) -> ModelShape:
        hidden = _first(config, "hidden_size", "n_embd", "d_model")
        heads = _first(config, "num_attention_heads", "n_head")
        kv_heads = _first(config, "num_key_value_heads", default=heads) or heads
        return cls(
            parameters=sum(p.numel() for p in model.parameters()),
            blocks=_first(config, "num_hidden_layers", "n_layer"),
            hidden=hidden,
            kv_hidden=hidden * kv_heads // heads,
            intermediate=_first(config, "intermediate_size", "n_inner", "ffn_dim", default=None) or 4 * hidden,
            vocab=_first(config, "vocab_size"),
            layers={layer.name: (layer.d_out, layer.d_in) for layer in select_layers(model, patterns)},
        )


def _first(config: object, *keys: str, default: object = InputError) -> int:
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    if default is InputError:
        raise InputError(f"model: the configuration gives none of {', '.join(keys)}; the memory plan needs it")
    return default  # type: ignore[return-value]


@dataclass(frozen=True)
class Workload:
    """The settings that size each step (pretrace.yaml's, and the data's counts)."""

    batch_size: int = 8
    max_length: int = 512
    dtype: str = "float32"
    documents: int = 0
    queries: int = 0
    query_length: int = 512
    projection: tuple[int, int] | None = None
    query_rank: int | None = None
    layer_groups: int = 1
    device: str = "cuda"  # on "cpu" the results a step gathers sit in the same memory
    factor_block_size: int | None = None
    document_rank: int | None = None
    stored_gradient_dtype: str = "float32"
    activation_checkpointing: bool = False
    document_tokens: int | None = None  # mean tokens a document (time estimates); unset = max_length
    fit_documents: int | float | None = None  # the EK-FAC fitting sample (a count or a fraction); unset = all
    fisher: str = "sampled"  # the fitting passes' labels: drawn from the model, or the data's ("empirical")
    partitioned_groups: bool = False
    """Layer groups are separate steps (`layer_groups` set above 1: a pod per shard and group), so a
    fitting step's host memory holds its own group's sums; within one step every group's are joined."""
    query_groups: int | None = None
    """Layer groups of the query-gradient pass (the `query_gradients` step); unset = `layer_groups`."""
    document_groups: int | None = None
    """Layer groups of the document-gradient (scoring) pass (the `scores` step); unset = `layer_groups`.
    The scoring passes hold other tensors than fitting (the projection's matrices, not the covariance
    sums), so each takes the fewest groups its own step fits in: only the fitting chain is
    partitioned by group, and a group changes no layer's gradients."""

    def groups_of(self, step: str) -> int:
        """The layer groups ``step``'s pass takes (`SCORING_GROUPS`; else `layer_groups`)."""
        own = SCORING_GROUPS.get(step)
        return (getattr(self, own) if own else None) or self.layer_groups


SCORING_GROUPS = {"query_gradients": "query_groups", "scores": "document_groups"}
"""The scoring steps, each with the `Workload` field of its own layer groups."""


def activation_bytes(
    shape: ModelShape, tokens: int, itemsize: int, checkpointed: bool = False, sampled: bool = False
) -> int:
    """The model's own tensors alive at the peak of one forward and backward with frozen weights:
    per block and token the residual stream, attention's saved queries, keys, values and output,
    the MLP's four intermediate tensors (in the compute dtype; norms keep float32 copies when it is
    narrower), and at the loss the predicted positions' final hidden states with their gradient and
    one chunk's logits (`pretrace.influence.capture.chunked_sequence_losses` computes each chunk's
    gradient with its loss and frees its logits, so one chunk's exist at a time). Checkpointed
    (`pretrace.model.activation_checkpointing`), each block keeps its input alone and one block's
    tensors live again while it is recomputed."""
    per_block = itemsize * (6 * shape.hidden + 2 * shape.kv_hidden + 4 * shape.intermediate)
    if itemsize < 4:
        per_block += 2 * 4 * shape.hidden
    kept = shape.blocks * itemsize * shape.hidden + per_block if checkpointed else shape.blocks * per_block
    per_vocab = (
        LOGIT_BYTES_PER_VOCAB
        + (SAMPLING_BYTES_PER_VOCAB if sampled else 0)
        + (NARROW_HEAD_BYTES_PER_VOCAB if itemsize < 4 else 0)
    )
    logits = min(tokens, LOGITS_CHUNK_TOKENS) * per_vocab * shape.vocab
    return tokens * (kept + 2 * itemsize * shape.hidden) + logits


LOADED = ("weights", "eigenbases", "factors", "query gradients", "query gradient factors")
"""Parts that are a step's inputs, on the device before it begins (on a CPU, the very tensors
read from storage): what the step itself allocates is the rest (`Step.allocated`)."""


@dataclass
class Step:
    """One step's peak device memory, with the parts it is the sum of, and its host and disk needs."""

    name: str
    parts: dict[str, int]
    host: int = 0
    disk: int = 0
    groups: int | None = None  # the layer groups its pass takes, when not the plan's (`Workload.groups_of`)

    @property
    def device(self) -> int:
        return sum(self.parts.values())

    @property
    def allocated(self) -> int:
        """The bytes the step allocates itself, its inputs already in memory (`LOADED`)."""
        return sum(size for part, size in self.parts.items() if part not in LOADED)


@dataclass
class Plan:
    steps: list[Step]
    groups: list[list[str]] = field(default_factory=list)

    @property
    def peak(self) -> Step:
        return max(self.steps, key=lambda step: step.device)

    def step(self, name: str) -> Step:
        return next(step for step in self.steps if step.name == name)

    def table(self) -> str:
        """One line per step: its layer groups, peak device memory, its largest part, host memory and disk."""
        lines = [
            f"memory plan ({len(self.groups)} layer group{'s' if len(self.groups) != 1 else ''}):",
            f"  {'step':<18} {'groups':>6} {'device GB':>10} {'host GB':>9} {'disk GB':>9}  largest part",
        ]
        for step in self.steps:
            part, size = max(step.parts.items(), key=lambda kv: kv[1])
            lines.append(
                f"  {step.name:<18} {step.groups or len(self.groups):>6} {step.device / GB:>10.2f}"
                f" {step.host / GB:>9.2f} {step.disk / GB:>9.2f}  {part} {size / GB:.2f}"
            )
        return "\n".join(lines)


def plan(shape: ModelShape, work: Workload) -> Plan:
    """Each step's peak for the largest of its groups of the tracked layers: ``work.layer_groups``
    for the fitting chain, the scoring steps' own counts for theirs (`Workload.groups_of`)."""
    groups = _split(tuple(shape.layers.items()), work.layer_groups)
    sizes = _Sizes(shape, work)
    return Plan(
        [sizes.covariances(), sizes.eigenbasis(), sizes.lambdas(), sizes.query_gradients(), sizes.scores()], groups
    )


@cache
def _split(layers: tuple[tuple[str, tuple[int, int]], ...], groups: int) -> list[list[str]]:
    """`split_layers`, once per shape and count: a chooser plans the same groupings many times."""
    return split_layers(dict(layers), groups)


@cache
def _heaviest(layers: tuple[tuple[str, tuple[int, int]], ...], groups: int, size) -> list[tuple[int, int]]:
    """The shapes of the group with the largest total ``size``: the one that sets the peak."""
    shape = dict(layers)
    shapes = [[shape[name] for name in group] for group in _split(layers, groups)]
    return max(shapes, key=lambda group: sum(size(*s) for s in group))


def _sides(d_out: int, d_in: int) -> int:
    return d_out + d_in


def _covariance(d_out: int, d_in: int) -> int:
    return d_in * d_in + d_out * d_out


@cache
def _kept_covariance(block_size: int | None):
    """Floats of a layer's covariance sums as the device keeps them (`BlockDiagonalSum`): each
    side's diagonal blocks of at most ``block_size``, the whole squares without one."""

    def size(d_out: int, d_in: int) -> int:
        return sum(_split_squares(side, block_size) for side in (d_out, d_in))

    return size


@cache  # the chooser plans the same sides thousands of times
def _split_squares(side: int, block_size: int | None) -> int:
    return sum((b.stop - b.start) ** 2 for b in diagonal_blocks(side, block_size))


@cache
def _widest_block(side: int, block_size: int | None) -> int:
    return max(b.stop - b.start for b in diagonal_blocks(side, block_size))


def _per_example(d_out: int, d_in: int) -> int:
    return d_out * d_in


class _Sizes:
    """The bytes of each step's parts for one model shape, workload and grouping."""

    def __init__(self, shape: ModelShape, work: Workload) -> None:
        self.shape, self.work = shape, work
        self.w = resolve_dtype(work.dtype).itemsize
        self.all = list(shape.layers.values())
        self.upcast = self.w < 4 and work.device != "cuda"  # a GPU keeps captured bf16/fp16 values as they are
        self.doc_tokens = work.batch_size * work.max_length
        self.query_batch = min(work.batch_size, max(work.queries, 1))
        self.k_out, self.k_in = work.projection or (None, None)

    def on_host(self, size) -> int:
        """Floats of ``size`` over the layers a fitting step holds on the host: its own group's when
        groups are separate steps (`Workload.partitioned_groups`), else every layer's."""
        layers = self.heaviest(size) if self.work.partitioned_groups else self.all
        return sum(size(*s) for s in layers)

    def heaviest(self, size, step: str = "covariances") -> list[tuple[int, int]]:
        """The shapes of ``step``'s group with the largest total ``size``: the one that sets the peak."""
        return _heaviest(tuple(self.shape.layers.items()), self.work.groups_of(step), size)

    def forward(self, tokens: int, layers: list[tuple[int, int]], fitting: bool = False) -> dict[str, int]:
        """A captured pass: weights, the model's activations (the tracked layers' inputs among
        them), and per tracked layer per token the output gradient the hook keeps, plus float32
        copies of inputs and gradients where they are upcast. Summed: the backward pass makes the
        gradients while most activations are still alive. A ``fitting`` pass draws its labels
        when `Workload.fisher` is sampled."""
        w, checkpointed = self.w, self.work.activation_checkpointing
        inputs = w if checkpointed else 0  # the hooks keep layer inputs that checkpointed blocks would free
        upcast = 4 if self.upcast else 0
        captured = sum(w * d_out + inputs * d_in + upcast * (d_in + d_out) for d_out, d_in in layers)
        return {
            "weights": self.shape.parameters * w,
            "activations": activation_bytes(
                self.shape, tokens, w, checkpointed, sampled=fitting and self.work.fisher == "sampled"
            ),
            "captured": tokens * captured,
        }

    def gathered(self, part: str, size: int) -> dict[str, int]:
        """Results a step moves to the host as it goes: in device memory only on a CPU."""
        return {part: size} if self.work.device == "cpu" else {}

    def rotated(self, batch: int, tokens: int, copies: int) -> int:
        """A layer's per-example gradients in the eigenbasis: ``copies`` (batch, d_out, d_in) float32
        tensors (rotated, squared or preconditioned) and the rotated per-token values."""
        return max(4 * batch * (copies * o * i + tokens * (o + i)) for o, i in self.all)

    def kept(self, d_out: int, d_in: int) -> tuple[int, int]:
        """A layer's (projected) gradient shape: a projection keeps at most the layer's sides."""
        return min(self.k_out or d_out, d_out), min(self.k_in or d_in, d_in)

    def stored(self, d_out: int, d_in: int) -> int:
        """Floats of one layer's (projected) gradient."""
        k_out, k_in = self.kept(d_out, d_in)
        return k_out * k_in

    def document_bytes(self) -> int:
        """Bytes of one document's stored gradients: (projected) per layer, dense or as rank-c
        factors (`document_rank`), in `stored_gradient_dtype`."""
        rank, dtype = self.work.document_rank, self.work.stored_gradient_dtype
        if rank is None:
            return sum(k_out * row_bytes(dtype, k_in) for k_out, k_in in (self.kept(o, i) for o, i in self.all))
        return sum(factor_bytes(dtype, rank, *self.kept(o, i)) for o, i in self.all)

    def query_floats(self, layers: list[tuple[int, int]]) -> int:
        """Floats kept per query: dense (projected) gradients, or rank-r factors."""
        rank = self.work.query_rank
        if rank is None:
            return sum(self.stored(o, i) for o, i in layers)
        return sum(rank * sum(self.kept(o, i)) for o, i in layers)

    def block(self, layers: list[tuple[int, int]]) -> int:
        """The widest diagonal block of these layers' factors (`factor_block_size`)."""
        return max(_widest_block(side, self.work.factor_block_size) for shape in layers for side in shape)

    def covariances(self) -> Step:
        kept, block_size = _kept_covariance(self.work.factor_block_size), self.work.factor_block_size
        g, all_cov = self.heaviest(kept), self.on_host(_covariance)
        passed = self.forward(self.doc_tokens, g, fitting=True) | {
            # `pretrace.influence.ekfac.BlockDiagonalSum`: per diagonal block (the whole side
            # without factor_block_size) a float64 total and the float32 running sum folded into it
            "float64 sums": 12 * sum(kept(*s) for s in g),
            "batch products": 4 * self.block(g) ** 2,  # one diagonal block's float32 product at a time
        }
        # on a CPU the blocks are placed in their stored squares after the pass has freed its tensors
        freed = sum(passed[part] for part in ("activations", "captured", "batch products"))
        split = sum(side * side for s in g for side in s if len(diagonal_blocks(side, block_size)) > 1)
        squares = self.gathered("stored squares beyond the pass's freed tensors", 8 * split - freed)
        return Step(
            "covariances",
            passed | {k: v for k, v in squares.items() if v > 0},
            host=8 * all_cov,
            disk=8 * all_cov,
        )

    def eigenbasis(self) -> Step:
        square, all_cov = self.block(self.all), self.on_host(_covariance)
        return Step(
            "eigenbasis",
            {"float64 matrix, copy, vectors, solver work": 8 * 8 * square * square},
            host=8 * all_cov + 4 * all_cov,
            disk=4 * (all_cov + self.on_host(_sides)),
        )

    def lambdas(self) -> Step:
        g, work = self.heaviest(factor_floats), self.work
        every = self.on_host(_per_example)
        return Step(
            "lambdas",
            self.forward(self.doc_tokens, g, fitting=True)
            | {
                # a block-diagonal eigenbasis as its blocks (`pretrace.influence.ekfac.BlockDiagonal`)
                "eigenbases": 4 * sum(_kept_covariance(work.factor_block_size)(*s) for s in g),
                "float64 sums": 12 * sum(_per_example(*s) for s in g),  # as the covariances' (`DeviceSum`)
                "rotated per-example": self.rotated(work.batch_size, work.max_length, 2),
            },
            host=4 * self.on_host(_covariance) + 8 * every,
            disk=8 * every,
        )

    def query_gradients(self) -> Step:
        g, work = self.heaviest(factor_floats, "query_gradients"), self.work
        every = 4 * work.queries * self.query_floats(self.all)
        return Step(
            "query_gradients",
            self.forward(self.query_batch * work.query_length, g)
            | {
                "factors": 4 * sum(factor_floats(*s) for s in g),
                "rotated per-example": self.rotated(self.query_batch, work.query_length, 4),
                **self.gathered("gathered query gradients", 4 * work.queries * self.query_floats(g)),
            },
            host=4 * sum(factor_floats(*s) for s in self.all) + every,
            disk=every,
            groups=work.groups_of("query_gradients"),
        )

    def projection(self, layers: list[tuple[int, int]]) -> dict[str, int]:
        """What projecting document gradients holds on the device (`KroneckerProjection.for_documents`):
        per layer the k_out x d_out and k_in x d_in matrices (the kept eigenvectors, scaled by the
        corrected eigenvalues, or random ones) in float32; never the full eigenbases, which only
        the query gradients' preconditioning needs."""
        if self.work.projection is None:
            return {}
        sides = ((k, d) for o, i in layers for k, d in zip(self.kept(o, i), (o, i), strict=True))
        return {"kept eigenvectors": 4 * sum(k * d for k, d in sides if k < d)}  # a side kept whole needs none

    def scores(self) -> Step:
        g, work = self.heaviest(_per_example, "scores"), self.work
        if work.query_rank is None:
            scoring = {
                "query gradients": 4 * work.queries * self.query_floats(g),
                "one layer's document gradients": 4 * work.batch_size * max(self.stored(*s) for s in g),
            }
        else:  # factored queries score from per-token products (pretrace.influence.low_rank.captured_inner_products)
            scoring = {
                "query gradient factors": 4 * work.queries * self.query_floats(g),
                "per-token products": 3 * 4 * min(self.doc_tokens * work.queries * work.query_rank, CHUNK_NUMBERS),
            }
        matrix = 4 * work.queries * work.documents
        documents = work.documents * self.document_bytes()  # the document_gradients store
        return Step(
            "scores",
            self.forward(self.doc_tokens, g) | scoring | self.projection(g) | self.gathered("scores", matrix),
            host=4 * work.queries * self.query_floats(self.all) + matrix,
            disk=matrix + documents,
            groups=work.groups_of("scores"),
        )


def suggestion(work: Workload, fitted: Workload) -> str:
    """The settings that change, as pretrace.yaml lines."""
    keys = ("layer_groups", "batch_size", "activation_checkpointing")
    changed = [
        f"{key}: {str(getattr(fitted, key)).lower()}" for key in keys if getattr(fitted, key) != getattr(work, key)
    ]
    return ", ".join(changed)
