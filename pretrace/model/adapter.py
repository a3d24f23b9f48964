"""Model adapter: load a Hugging Face causal LM and pick the linear layers whose influence we track.

Any architecture works as long as its tracked layers are linear maps: `nn.Linear`, or GPT-2's
`Conv1D` (the same map with a transposed weight).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from pretrace.errors import InputError
from pretrace.model.activation_checkpointing import transformer_blocks
from pretrace.model.checkpoint_cache import local_checkpoint

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HALF_PRECISION = (torch.bfloat16, torch.float16)
DEFAULT_LAYER_PATTERNS = ("mlp",)


def _conv1d_class() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # very old or very new transformers without Conv1D
        return None
    return Conv1D


@dataclass(frozen=True)
class TrackedLayer:
    """A linear map y = W a (+ b) whose weight gradient we factorise.

    `d_in` counts the appended constant 1 when the layer has a bias, so the bias gradient is
    the last column of the (d_out, d_in) gradient matrix.
    """

    name: str
    module: nn.Module = field(repr=False, compare=False)
    d_in: int
    d_out: int
    has_bias: bool
    transposed: bool  # Conv1D stores W as (in, out)

    def weight_gradient(self) -> torch.Tensor:
        """The module's accumulated .grad of [W | b] in our (d_out, d_in) layout (used by tests)."""
        grad = self.module.weight.grad
        grad = grad.t() if self.transposed else grad
        if self.has_bias:
            grad = torch.cat([grad, self.module.bias.grad[:, None]], dim=1)
        return grad


def linear_layers(model: nn.Module) -> list[TrackedLayer]:
    """Every linear map in the model, in module order."""
    conv1d = _conv1d_class()
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            d_out, d_in = module.weight.shape
            transposed = False
        elif conv1d is not None and isinstance(module, conv1d):
            d_in, d_out = module.weight.shape
            transposed = True
        else:
            continue
        has_bias = getattr(module, "bias", None) is not None
        layers.append(TrackedLayer(name, module, d_in + int(has_bias), d_out, has_bias, transposed))
    return layers


def select_layers(model: nn.Module, patterns: Sequence[str] = DEFAULT_LAYER_PATTERNS) -> list[TrackedLayer]:
    """Linear layers whose qualified name matches any regex in `patterns` (searched, not anchored)."""
    if isinstance(patterns, str):
        patterns = [patterns]
    if not patterns:
        raise InputError("layers: give at least one name pattern, e.g. ['mlp']")
    try:
        compiled = [re.compile(p) for p in patterns]
    except re.error as exc:
        raise InputError(f"layers: {exc.pattern!r} is not a valid regular expression ({exc})") from None
    candidates = linear_layers(model)
    chosen = [layer for layer in candidates if any(c.search(layer.name) for c in compiled)]
    if not chosen:
        names = ", ".join(layer.name for layer in candidates[:40])
        more = f" (and {len(candidates) - 40} more)" if len(candidates) > 40 else ""
        raise InputError(
            f"layers: no linear layer matches {list(patterns)}. The model's linear layers are: "
            f"{names}{more}. Use a pattern that matches some of them, e.g. 'mlp'."
        )
    return chosen


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise InputError(f"device: {device!r} is not one of auto, cpu, cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device: cuda was asked for but torch sees no GPU; use device: auto or cpu")
    return torch.device(device)


def resolve_dtype(dtype: str) -> torch.dtype:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise InputError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}") from None


@dataclass
class LoadedModel:
    """A model in eval mode with its tokenizer, the tracked layers and where/how it runs.

    The forward pass runs under autocast in `dtype`, so matrix products can run in bf16/fp16
    on a GPU while every captured activation and gradient is summed in float32.
    """

    model: nn.Module
    tokenizer: object | None
    layers: list[TrackedLayer]
    device: torch.device
    dtype: torch.dtype = torch.float32
    activation_checkpointing: bool = False  # recompute each block's activations in the backward pass

    @property
    def max_context(self) -> int | None:
        return context_of(getattr(self.model, "config", None))

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float32 whatever the model's dtype; float64 for a float64 model (used by tests)."""
        return torch.promote_types(next(self.model.parameters()).dtype, torch.float32)

    @property
    def keeps_half_precision(self) -> bool:
        """Whether captured activations and gradients stay in the model's bf16/fp16 on this device:
        on a GPU their products run on tensor cores with float32 accumulation (`float32_matmul`),
        which is as exact as upcasting first (the values are the model's own) and many times faster."""
        return self.device.type == "cuda" and self.dtype in HALF_PRECISION

    @property
    def pad_token_id(self) -> int:
        """Padding is masked out everywhere, so any id works when there is no tokenizer."""
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return 0 if pad is None else pad

    def autocast(self):
        """Autocast context for the forward pass (a no-op in float32)."""
        enabled = self.dtype != torch.float32
        return torch.autocast(device_type=self.device.type, dtype=self.dtype, enabled=enabled)

    def layer_shapes(self) -> dict[str, tuple[int, int]]:
        return {layer.name: (layer.d_out, layer.d_in) for layer in self.layers}

    def restricted(self, names: Sequence[str]) -> LoadedModel:
        """The same model tracking only ``names`` (a layer group): every pass then captures,
        holds and fits those layers alone."""
        chosen = set(names)
        return replace(self, layers=[layer for layer in self.layers if layer.name in chosen])


def wrap_model(
    model: nn.Module,
    tokenizer: object | None = None,
    *,
    layers: Sequence[str] = DEFAULT_LAYER_PATTERNS,
    device: str = "auto",
    dtype: str = "float32",
    activation_checkpointing: bool = False,
) -> LoadedModel:
    """Prepare an in-memory model: eval mode, on the device, tracked layers chosen; with
    ``activation_checkpointing`` its passes keep only each block's input (`pretrace.model.activation_checkpointing`)."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    model = model.to(torch_device).eval()
    if activation_checkpointing:
        transformer_blocks(model)  # refused now, not at the first pass, when there are none
    return LoadedModel(
        model, tokenizer, select_layers(model, layers), torch_device, torch_dtype, activation_checkpointing
    )


def context_of(config: object) -> int | None:
    """The longest sequence a model's configuration says it takes, if it says."""
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_model(
    path: str,
    *,
    layers: Sequence[str] = DEFAULT_LAYER_PATTERNS,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    activation_checkpointing: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or an fsspec URL (s3://...).

    Refused, with the reason and the fix: checkpoints whose weights are pickles (unless
    ``allow_pickle``), models that are not causal LMs, weights transformers would initialise
    (a missing LM head), attention that sees later tokens, and a tokenizer with more ids than
    the model has embeddings.
    """
    from transformers import AutoModelForCausalLM

    checkpoint = open_checkpoint(path, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    with _remote_code_hint(path):
        model, info = AutoModelForCausalLM.from_pretrained(
            checkpoint.local,
            config=checkpoint.config,
            dtype=resolve_dtype(dtype),
            trust_remote_code=trust_remote_code,
            use_safetensors=checkpoint.weights == "safetensors",
            output_loading_info=True,
        )
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise InputError(
            f"model: {path} lacks weights a {type(model).__name__} needs ({shown}); transformers would "
            "initialise them at random. Give a checkpoint saved from a causal LM with its LM head "
            "(model.save_pretrained on a ...ForCausalLM)"
        )
    _check_causal(model, path)
    return wrap_model(
        model,
        checkpoint.tokenizer,
        layers=layers,
        device=device,
        dtype=dtype,
        activation_checkpointing=activation_checkpointing,
    )


@dataclass
class Checkpoint:
    """A checkpoint whose files were checked without loading its weights."""

    local: Path  # the folder transformers reads (a verified copy for a remote checkpoint)
    config: object  # its transformers configuration, a causal LM's
    weights: str  # "safetensors", or "pickle" when only pickles exist and the user allowed them
    tokenizer: object  # with no more ids than the model has embedding rows


def open_checkpoint(path: str, *, trust_remote_code: bool = False, allow_pickle: bool = False) -> Checkpoint:
    """Everything about a checkpoint that can be checked without its weights, from one local
    copy: a causal LM's configuration, safe weight files and a tokenizer that fits the model."""
    local = local_checkpoint(path)
    config = causal_config(local, path, trust_remote_code)
    weights = weight_format(local, path, allow_pickle)
    tokenizer = _tokenizer(local, path, trust_remote_code)
    check_vocabulary(tokenizer, config, path)
    return Checkpoint(local, config, weights, tokenizer)


def causal_config(local: Path, path: str, trust_remote_code: bool):
    """The checkpoint's configuration, refused unless it describes a causal LM."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if not (local / "config.json").exists():
        raise InputError(f"model: {path} has no config.json; save the model with save_pretrained")
    with _remote_code_hint(path):
        config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    saved_as = [a for a in getattr(config, "architectures", None) or [] if isinstance(a, str)]
    causal = [a for a in saved_as if a.endswith(CAUSAL_CLASS_SUFFIXES)]
    mapped = type(config) in AutoModelForCausalLM._model_mapping or bool(getattr(config, "auto_map", None))
    if getattr(config, "is_encoder_decoder", False) or not mapped or (saved_as and not causal):
        kind = ", ".join(saved_as) or f"{type(config).__name__} ({config.model_type})"
        raise InputError(
            f"model: {path} is a {kind}, not a causal language model; pretrace explains next-token "
            "predictions and needs a decoder checkpoint saved from a ...ForCausalLM (Llama, GPT-2, "
            "GPT-NeoX, OLMo, Cohere)"
        )
    return config


CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")
"""How transformers names the classes of causal LMs (LlamaForCausalLM, GPT2LMHeadModel)."""


def weight_format(local: Path, path: str, allow_pickle: bool) -> str:
    """ "safetensors", or "pickle" when only pickled weights exist and the user allowed them."""
    names = [p.name for p in local.iterdir()]
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors"
    pickled = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
    if not pickled:
        raise InputError(f"model: {path} holds no weights (*.safetensors); save the model with save_pretrained")
    if not allow_pickle:
        raise InputError(
            f"model: {path} holds only pickled weights ({', '.join(pickled)}), which can run code when "
            "loaded; re-save the model with save_pretrained (it writes safetensors), or set "
            "`allow_pickle: true` in pretrace.yaml if you trust the file"
        )
    return "pickle"


@contextmanager
def _remote_code_hint(path: str) -> Iterator[None]:
    """transformers tells the user to pass trust_remote_code=True; a pretrace user sets a key."""
    try:
        yield
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise InputError(
            f"model: {path} needs the Python code it ships with (auto_map in its config.json); set "
            "`trust_remote_code: true` in pretrace.yaml only if you trust that code"
        ) from None


def _check_causal(model: nn.Module, path: str) -> None:
    """A causal LM's prediction at a position must not change when a later token does."""
    vocab = model.get_input_embeddings().num_embeddings
    probe = torch.tensor([[1 % vocab, 2 % vocab, 3 % vocab], [1 % vocab, 2 % vocab, 4 % vocab]])
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=probe.to(device)).logits.float()
    changed = (logits[0, :2] - logits[1, :2]).abs().max()
    if changed > 1e-5 * logits.abs().max():  # causal: equal up to rounding; encoders differ ~1e-3 even at random init
        raise InputError(
            f"model: {path} lets each token see the tokens after it (bidirectional attention, e.g. an "
            "encoder loaded as a decoder); pretrace needs a causal LM whose predictions use only the "
            "tokens before them"
        )


def check_vocabulary(tokenizer: object, config: object, path: str) -> None:
    """Every id the tokenizer can emit must have a row in the model's embedding matrix."""
    rows = getattr(config, "vocab_size", None)
    if not isinstance(rows, int):
        return
    if len(tokenizer) > rows:
        raise InputError(
            f"model: the tokenizer of {path} has {len(tokenizer)} tokens but the model's embedding has "
            f"{rows} rows, so ids >= {rows} have no embedding; save the tokenizer the model was "
            "trained with (or resize the model's embeddings and save both)"
        )


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """The checkpoint's tokenizer alone (tokenizing a corpus needs no weights)."""
    return _tokenizer(local_checkpoint(path), path, trust_remote_code)


def _tokenizer(local: Path, path: str, trust_remote_code: bool):
    from transformers import AutoTokenizer

    with _remote_code_hint(path):
        try:
            tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=trust_remote_code)
        except (OSError, TypeError) as exc:
            raise InputError(
                f"model: {path} has no tokenizer transformers can load ({exc}); save the "
                "tokenizer beside the model with tokenizer.save_pretrained"
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
