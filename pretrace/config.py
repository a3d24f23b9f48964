"""The one configuration schema, shared by ``pretrace.yaml`` and the Dagster resources.

Keeping a single schema means a setting is named, defaulted and validated once, whether it
comes from a file, a notebook or Dagster run config. Errors are InputErrors that name the source
(the file) and the key, and suggest the nearest valid key for a typo.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    ValidationError,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

from pretrace.errors import InputError

PATH_KEYS = ("model", "corpus", "queries", "storage")
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
"""A Hugging Face model id (`org/name`): a `model` of this form that is no folder beside the
configuration is looked up, offline, in the local Hugging Face cache (`pretrace.model.hub_cache`)."""
"""Keys holding a local path or URL; relative paths are relative to the YAML file's folder."""
SHARED_BY_COMPARED_MODELS = ("corpus", "queries", "storage", "compare_models")
"""Settings every compared model takes from the main configuration."""
SIDE_LIMIT = 1 << 16
"""The widest linear-layer side any setting may name (Llama-3-405B's MLP is 53,248 wide): a rank,
projection or block beyond it is a typo, refused when the configuration loads rather than after
hours of work or at the first allocation."""
ProjectionBasis = Literal["whitened", "principal", "raw"]
"""How stored document gradients are projected (`pretrace.influence.projection`)."""
StoredGradientDtype = Literal["float32", "bfloat16", "int8", "int4"]
QUANTIZED_DTYPES = tuple(d for d in get_args(StoredGradientDtype) if d.startswith("int"))
"""The stored precisions `pretrace.influence.quantization` writes, dense or factored."""
COMPACT_STORE: dict[str, Any] = {"projection": (304, 304), "document_rank": 18, "stored_gradient_dtype": "int4"}
"""The 64x store, for corpora whose stored gradients would not fit dense: each layer's 304 x 304
principal block as rank-18 int4 factors, 1/66 of dense float32 bytes on 512 x 128 layers. What the
scale benches and the paper-study plan store; on a longer-trained model it keeps much less than
on a briefly trained one (docs/performance.md, "Projection accuracy")."""


def _positive_number(value: Any) -> float:
    """A finite number > 0; numeric strings count, since PyYAML reads ``1e-3`` as a string."""
    number = math.nan
    if isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:
            number = float(value)
        except ValueError:
            pass
    if not (math.isfinite(number) and number > 0):
        raise ValueError("must be a number > 0 (relative to the mean eigenvalue, e.g. 0.1) or {absolute: <number > 0>}")
    return number


class Damping(BaseModel):
    """λ added to the EK-FAC eigenvalues: ``relative`` × mean eigenvalue, or ``absolute``.

    YAML forms: a number (relative), or ``{absolute: <number>}`` (``{relative: <number>}`` too).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    relative: float | None = None
    absolute: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_yaml(cls, value: Any) -> Any:
        if isinstance(value, Damping):
            return value
        if isinstance(value, Mapping) and not value:  # Damping() in code: the paper's default
            return {"relative": 0.1}
        if isinstance(value, Mapping) and len(value) == 1 and set(value) <= set(cls.model_fields):
            ((key, number),) = value.items()
            return {key: _positive_number(number)}
        return {"relative": _positive_number(value)}

    @model_serializer
    def _to_yaml(self) -> float | dict[str, float]:
        return self.relative if self.relative is not None else {"absolute": self.absolute}

    def resolve(self, mean_eigenvalue: float) -> float:
        """The damping λ for a layer whose corrected eigenvalues have this mean."""
        return self.relative * mean_eigenvalue if self.relative is not None else self.absolute


class PretraceConfig(BaseModel):
    """Every setting of a pretrace run, with the defaults of the documented ``pretrace.yaml``."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    model: str = Field(
        default="./checkpoints/my-model",
        description="The checkpoint under study: a folder saved with save_pretrained, or an s3:// URL.",
    )
    corpus: str = Field(
        default="./corpus",
        description="Folder or s3:// prefix of the corpus: .jsonl, .jsonl.gz or .parquet files; one shard per file.",
    )
    queries: str = Field(
        default="./queries.jsonl",
        description="JSONL file of the queries to explain: id, kind, prompt, completion (else the model writes it), answer.",
    )
    storage: str = Field(
        default="./data", description="Where every artefact is written: a local folder or s3://bucket/prefix."
    )
    layers: list[str] = Field(
        default_factory=lambda: ["mlp"],
        min_length=1,
        description="Regular expressions selecting the tracked linear layers by name (default: the MLPs).",
    )
    fisher: Literal["sampled", "empirical"] = Field(
        default="sampled",
        description="EK-FAC labels: 'sampled' from the model (true Fisher) or 'empirical' (the data's).",
    )
    damping: Damping = Field(
        default_factory=Damping,
        description="Damping λ = damping × mean corrected eigenvalue, per layer (the paper's 0.1).",
    )
    projection: tuple[StrictInt, StrictInt] | None = Field(
        default=None, description="Store document gradients projected to [k_out, k_in] per layer; unset = exact."
    )
    projection_basis: ProjectionBasis = Field(
        default="principal",
        description="'whitened': project in the EK-FAC eigenbasis scaled by the eigenvalues; 'principal': keep the [k_out, k_in] eigenvectors of most curvature (no random matrix; more accurate on trained models); with either, document gradients depend on the factors. 'raw': project raw gradients (survive a refit).",
    )
    query_rank: StrictInt | None = Field(
        default=None,
        gt=0,
        le=SIDE_LIMIT,
        description="Keep preconditioned query gradients as rank-r factors per layer; unset = dense.",
    )
    document_rank: StrictInt | None = Field(
        default=None,
        gt=0,
        le=SIDE_LIMIT,
        description="Store each document's (projected) gradient as rank-c factors per layer, c × (k_out + k_in) numbers instead of k_out × k_in; unset = full.",
    )
    stored_gradient_dtype: StoredGradientDtype = Field(
        default="float32",
        description="Precision of stored document gradients: 'bfloat16' halves the store; 'int8' and 'int4' keep 8 or 4 bits per number plus a scale per row (per rank of `document_rank` factors): a quarter or an eighth of the store, so the same bytes hold a larger projection. Scores from anything but float32 are checked against exact ones on a sample of every shard, like a projection's.",
    )
    max_length: StrictInt = Field(
        default=512, ge=2, le=1 << 20, description="Tokens per document chunk; longer documents are split into chunks."
    )
    batch_size: StrictInt = Field(default=8, gt=0, le=1 << 16, description="Documents per forward/backward pass.")
    fit_shards: Literal["all"] | list[str] = Field(
        default="all", description="Shards the EK-FAC factors are fitted on; unset = every current shard."
    )
    fit_documents: StrictInt | float | None = Field(
        default=None,
        description="Fit the EK-FAC factors on a seeded sample of the fit shards' documents, as Grosse et al. and the paper did: a fraction in (0, 1] (each document kept by a hash of `seed` and its id: a new file never changes which old documents are sampled) or a count > 1 (the documents of smallest hash over every fit shard: a new fit shard refits every shard's passes); unset = every document of the fit shards.",
    )
    exclude_files: list[str] = Field(
        default=[],
        max_length=1 << 20,
        description="Corpus files (by file name) left out of everything, the fit and the report included: a file that fails to read blocks what depends on it until it is fixed or listed here. The report names every file left out.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="'auto' (a GPU when present), 'cpu' or 'cuda'."
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        default="float32", description="Model compute dtype: 'float32', 'bfloat16' or 'float16' (sums stay in float32)."
    )
    layer_groups: StrictInt | None = Field(
        default=None,
        gt=0,
        le=1 << 12,
        description="Fit the EK-FAC factors of the tracked layers in this many groups, one pass over the data each, so only one group's sums and factors are on the device at once (same results); more than one also partitions the EK-FAC fitting assets by group, a run (a pod) per shard and group; unset = as few as the device's memory allows, inside each run (`pretrace plan`). The query- and document-gradient passes take the fewest groups their own steps fit in, whatever this says (with a projection the document pass holds the kept eigenvectors only).",
    )
    factor_block_size: StrictInt | None = Field(
        default=None,
        gt=0,
        le=SIDE_LIMIT,
        description="Keep only the diagonal blocks (at most this wide) of each layer's activation and gradient covariances wider than this, and eigendecompose them a block at a time: Grosse et al.'s within-layer block-diagonal approximation, for layers too wide to decompose whole; unset = whole (exact K-FAC eigenbases).",
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="Keep only each transformer block's input during a pass and recompute the rest in the backward pass: the same results, about a third more compute, for models whose activations do not fit beside their weights (`pretrace plan` says when).",
    )
    gpus_per_step: int = Field(
        default=1,
        gt=0,
        le=1 << 10,
        description="GPUs one step uses; more than 1 runs the EK-FAC fitting passes and document gradients under torchrun, one process per GPU, each on its share of the shard's batches (fitting sums all-reduced, gradients gathered in document order: the same results to float rounding). A machine with fewer GPUs refuses the step; with `device: cpu` the processes use gloo on the CPU (for tests).",
    )
    device_memory_gb: float | None = Field(
        default=None,
        description="Device memory a run must fit, in GB; unset = what the GPU reports (no limit on a CPU).",
    )
    trust_remote_code: bool = Field(
        default=False, description="Run the checkpoint's own Python code (only for checkpoints you trust)."
    )
    allow_pickle: bool = Field(
        default=False,
        description="Load a checkpoint whose weights are only pickles (.bin), which can run code: trusted files only.",
    )
    seed: StrictInt = Field(
        default=0,
        ge=0,
        le=2**32 - 1,
        description="Seed of sampled Fisher labels, projections and the report's bootstrap.",
    )
    top_k: StrictInt = Field(
        default=50, gt=0, le=100_000, description="Top and bottom documents kept per query and shard for the report."
    )
    report_top_fraction: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="The report's top and bottom k per query as a fraction of the corpus (Ruis et al.'s k = 500 of 5M documents is 0.0001), at most top_k; unset = top_k documents. The report states either as a count and a corpus share, and flags one over 5%.",
    )
    rerank_k: StrictInt | None = Field(
        default=None,
        ge=0,
        description="Two-stage retrieval: of each query's top and bottom documents by stored (projected) score, how many get exact EK-FAC scores streamed from the model and are ranked by them; unset = top_k, 0 = none.",
    )
    tail_patch_k: StrictInt = Field(
        default=10,
        gt=0,
        le=10_000,
        description="Documents per query in the attribution check (tail-patch): one SGD step on each method's top-k (at most top_k).",
    )
    tail_patch_lr: float = Field(
        default=1e-3,
        description="Learning rate of the attribution check's SGD step (small: the change should be first-order).",
    )
    projection_floor: float = Field(
        default=0.9,
        description="Warn when stored (projected) scores correlate with exact ones below this Pearson r (0 to 1].",
    )
    completion_tokens: StrictInt = Field(
        default=128,
        gt=0,
        le=1 << 16,
        description="Most tokens the model writes when it answers a query (greedily; its own completions and the correctness check).",
    )
    completion_instruction: str | None = Field(
        default=None,
        description="Text appended to the prompt of a query the model completes, e.g. a chain-of-thought instruction; unset = none.",
    )
    completion_stop: list[str] = Field(
        default_factory=list,
        description="Strings that end the model's answer (at the token that completes one); its end-of-sequence token always does.",
    )
    demo_steps: StrictInt = Field(
        default=5000,
        gt=0,
        le=1_000_000,
        description="Optimizer steps that train the demo's own model (`pretrace demo` only; a user's checkpoint ignores it).",
    )
    demo_retrain: bool = Field(
        default=False,
        description="Train the demo's model even where the shipped one was trained from the same corpus and settings, and say whether training reproduced its bytes (`pretrace demo --retrain` only).",
    )
    compare_models: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Other models to run over the same corpus and queries and compare with this one: {name: {setting: value}}, e.g. {small: {model: ./checkpoints/small}}; each stored under <storage>/models/<name>.",
    )

    @field_validator("tail_patch_lr", mode="before")
    @classmethod
    def _learning_rate(cls, value: Any) -> float:
        try:
            return _positive_number(value)
        except ValueError:
            raise ValueError("must be a number > 0, e.g. 1e-3") from None

    @field_validator("device_memory_gb", mode="before")
    @classmethod
    def _memory(cls, value: Any) -> float | None:
        if value is None:
            return None
        try:
            return _positive_number(value)
        except ValueError:
            raise ValueError("must be a number of GB > 0, e.g. 80, or null for what the GPU reports") from None

    @field_validator("projection_floor", mode="before")
    @classmethod
    def _floor(cls, value: Any) -> float:
        try:
            number = _positive_number(value)
        except ValueError:
            number = math.nan
        if not number <= 1:
            raise ValueError("must be a correlation in (0, 1], e.g. 0.9")
        return number

    @field_validator("completion_stop")
    @classmethod
    def _stops(cls, stops: list[str]) -> list[str]:
        if any(not s for s in stops):
            raise ValueError('must be a list of non-empty strings, e.g. ["\\n\\n"]')
        return stops

    @field_validator("compare_models")
    @classmethod
    def _compared(cls, models: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in models.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
                raise ValueError(
                    f"{name!r}: a compared model's name is letters, digits, '-' and '_' (it names a folder)"
                )
            shared = sorted(set(overrides) & set(SHARED_BY_COMPARED_MODELS))
            if shared:
                raise ValueError(
                    f"{name}: {', '.join(shared)} cannot differ between compared models (they share "
                    "the corpus, the queries and the storage root); set only what makes the model differ"
                )
        return models

    def compared(self, name: str, source: str = "pretrace.yaml") -> PretraceConfig:
        """The configuration of compared model ``name``: these settings with its own, its
        artefacts under ``<storage>/models/<name>``."""
        overrides = self.compare_models[name]
        values = {
            **self.model_dump(mode="json"),
            **overrides,
            "compare_models": {},
            "storage": f"{self.storage.rstrip('/')}/models/{name}",
        }
        return parse_config(values, f"{source}, compare_models.{name}")

    @model_validator(mode="after")
    def _rerank_within_top(self) -> PretraceConfig:
        if self.rerank_k is not None and self.rerank_k > self.top_k:
            raise ValueError(
                f"rerank_k ({self.rerank_k}) exceeds top_k ({self.top_k}): candidates come from the "
                "top_k documents kept per query; raise top_k or lower rerank_k"
            )
        return self

    @field_validator("projection", mode="before")
    @classmethod
    def _projection(cls, value: Any) -> Any:
        if value is None or value == "none":
            return None
        pair = isinstance(value, (list, tuple)) and len(value) == 2
        if not pair or not all(type(k) is int and 0 < k <= SIDE_LIMIT for k in value):
            raise ValueError(f'must be "none" or [k_out, k_in], two integers from 1 to {SIDE_LIMIT}')
        return tuple(value)

    @field_serializer("projection")
    def _projection_yaml(self, value: tuple[int, int] | None) -> str | list[int]:
        return "none" if value is None else list(value)

    @field_validator("layers")
    @classmethod
    def _regexes(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a valid regular expression ({exc})") from None
        return patterns

    @field_validator("fit_documents", mode="before")
    @classmethod
    def _fit_documents(cls, value: Any) -> int | float | None:
        """A number <= 1 is a fraction, a whole number > 1 a count (so a float from the Dagster
        launchpad, 5000.0, is the count it reads as)."""
        if value is None:
            return None
        number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
        if not (0 < number <= 1 or (number > 1 and float(number).is_integer())):
            raise ValueError("must be a fraction in (0, 1], e.g. 0.1, or a whole count of documents > 1, e.g. 5000")
        return float(number) if number <= 1 else int(number)

    @field_validator("fit_shards", mode="before")
    @classmethod
    def _shards(cls, value: Any) -> Any:
        names = isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        if value != "all" and not names:
            raise ValueError('must be "all" or a non-empty list of shard names')
        return value

    @property
    def projects_with_factors(self) -> bool:
        """Whether stored document gradients are projected in the EK-FAC eigenbasis, and so
        depend on the factors."""
        return self.projection is not None and self.projection_basis != "raw"

    @property
    def projects_randomly(self) -> bool:
        """Whether gradients are projected through random matrices drawn from `seed` (raw and
        whitened bases); a principal projection keeps chosen eigenvectors, and none keeps all."""
        return self.projection is not None and self.projection_basis != "principal"

    @property
    def stores_exact_scores(self) -> bool:
        """Whether these settings store exact scores (`exact_store`)."""
        return exact_store(self.projection, self.query_rank, self.document_rank, self.stored_gradient_dtype)

    @property
    def reranked(self) -> int:
        """Documents per query and side that two-stage retrieval scores exactly (`rerank_k`)."""
        return self.top_k if self.rerank_k is None else self.rerank_k

    def result_settings(self) -> dict[str, Any]:
        """The settings as JSON values, as results depend on them: without a projection its
        basis means nothing, so changing it recomputes nothing."""
        values = self.model_dump(mode="json")
        if self.projection is None:
            values["projection_basis"] = None
        return values

    @property
    def loading(self) -> dict[str, bool]:
        """The options every load of the checkpoint takes (`pretrace.model.adapter.load_model`)."""
        return {"trust_remote_code": self.trust_remote_code, "allow_pickle": self.allow_pickle}

    def resolve_paths(self, base_dir: str | os.PathLike) -> PretraceConfig:
        """A copy whose relative local paths are made absolute against ``base_dir``; URLs stay."""
        update: dict[str, Any] = {}
        for key in PATH_KEYS:
            value = getattr(self, key)
            if "://" not in value:
                update[key] = _model_location(value, base_dir) if key == "model" else _absolute(value, base_dir)
        update["compare_models"] = {
            name: {
                **overrides,
                **(
                    {"model": _model_location(overrides["model"], base_dir)}
                    if isinstance(overrides.get("model"), str) and "://" not in overrides["model"]
                    else {}
                ),
            }
            for name, overrides in self.compare_models.items()
        }
        return self.model_copy(update=update)

    def to_yaml(self) -> str:
        """The configuration as ``pretrace.yaml`` text that :func:`load_config` reads back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def exact_store(
    projection: tuple[int, int] | None, query_rank: int | None, document_rank: int | None, stored_dtype: str
) -> bool:
    """Whether stored scores are exact: unprojected, full-rank document and query gradients, stored
    in float32. The one rule, read from settings before a run and from stored gradients after."""
    return projection is None and query_rank is None and document_rank is None and stored_dtype == "float32"


def reference_markdown() -> str:
    """docs/configuration.md, generated from the schema so that a setting is described once
    (`make docs` writes it; a test fails when the file and the schema differ)."""
    defaults = PretraceConfig().model_dump(mode="json")
    rows = ["| setting | default | what it does |", "|---|---|---|"]
    for key, field in PretraceConfig.model_fields.items():
        default = json.dumps(defaults[key], ensure_ascii=False)
        rows.append(f"| `{key}` | `{default}` | {field.description.replace('|', '&#124;')} |")
    return "\n".join(
        [
            "# Configuration",
            "",
            "<!-- Generated from pretrace/config.py by `make docs`: edit the schema's descriptions, not this page. -->",
            "",
            "Every setting of `pretrace.yaml`, with its default. The Dagster resource `pretrace` has the same",
            "fields, defaults and descriptions (the launchpad reads like the file); relative paths in the",
            "file are relative to its folder.",
            "",
            *rows,
            "",
            "The defaults, as a `pretrace.yaml`:",
            "",
            "```yaml",
            PretraceConfig().to_yaml().rstrip(),
            "```",
            "",
        ]
    )


def _model_location(value: str, base_dir: str | os.PathLike) -> str:
    """A Hugging Face id with no such folder beside the configuration stays an id; any other
    local path is made absolute."""
    if HUB_ID.fullmatch(value) and not os.path.exists(os.path.join(base_dir, value)):
        return value
    return _absolute(value, base_dir)


def _absolute(path: str, base_dir: str | os.PathLike) -> str:
    return os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))


def parse_config(data: Mapping[str, Any] | None, source: str) -> PretraceConfig:
    """Validate a mapping (parsed YAML, Dagster run config); errors name ``source`` and the key."""
    try:
        config = PretraceConfig.model_validate(dict(data or {}))
    except ValidationError as exc:
        problems = "\n".join(f"  - {_describe(error)}" for error in exc.errors())
        raise InputError(f"{source}: invalid configuration\n{problems}") from None
    for name in config.compare_models:  # each compared model's settings are valid too
        config.compared(name, source)
    return config


def _describe(error: Mapping[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"])
    if error["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, PretraceConfig.model_fields, n=1)
        valid = ", ".join(PretraceConfig.model_fields)
        hint = f"did you mean `{close[0]}`?" if close else f"valid keys: {valid}"
        return f"`{key}` is not a setting; {hint}"
    message = error["msg"].removeprefix("Value error, ")
    if not key:  # a rule across settings: the message names them
        return message
    return f"`{key}`: {message} (got {error['input']!r})"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys silently; a repeated setting is a mistake."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"`{key}` is set twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(path: str | os.PathLike) -> PretraceConfig:
    """Read and validate ``pretrace.yaml``; relative paths in it are relative to its folder."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        message = f"{path}: configuration file not found; create it or fix the path"
        raise InputError(message) from None
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise InputError(f"{path}: not valid YAML: {exc}") from None
    if data is not None and not isinstance(data, Mapping):
        raise InputError(f"{path}: expected `key: value` settings, got a {type(data).__name__}")
    return parse_config(data, str(path)).resolve_paths(path.parent.absolute())
