"""Model adapter: load a Hugging Face causal LM and pick the linear layers whose influence we track.

Any architecture works as long as its tracked layers are linear maps: `nn.Linear`, or GPT-2's
`Conv1D` (the same map with a transposed weight).
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
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

    @property
    def max_context(self) -> int | None:
        config = getattr(self.model, "config", None)
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    @property
    def accumulate_dtype(self) -> torch.dtype:
        """float32 whatever the model's dtype; float64 for a float64 model (used by tests)."""
        return torch.promote_types(next(self.model.parameters()).dtype, torch.float32)

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


def wrap_model(
    model: nn.Module,
    tokenizer: object | None = None,
    *,
    layers: Sequence[str] = DEFAULT_LAYER_PATTERNS,
    device: str = "auto",
    dtype: str = "float32",
) -> LoadedModel:
    """Prepare an in-memory model: eval mode, on the device, tracked layers chosen."""
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype)
    model = model.to(torch_device).eval()
    return LoadedModel(model, tokenizer, select_layers(model, layers), torch_device, torch_dtype)


def _local_checkpoint(path: str) -> Path:
    """A local directory holding the checkpoint; remote URLs are copied to a cache first.

    The cache lives in the user's own cache folder (mode 0700, not a shared temp path another
    user could plant a checkpoint in) and is keyed by the objects' fingerprint, so a checkpoint
    re-uploaded to the same URL is fetched again.
    """
    if "://" not in path or path.startswith("file://"):
        local = Path(path.removeprefix("file://")).expanduser()
        if not local.is_dir():
            raise InputError(f"model: {path} is not a directory; give a checkpoint saved with save_pretrained")
        return local
    from .fingerprint import cache_folder, shared_cache, tree_fingerprint
    from .storage import open_fs

    try:
        fingerprint = tree_fingerprint(path, shared_cache())
    except FileNotFoundError:
        raise InputError(f"model: no files under {path}; upload a save_pretrained directory") from None
    except Exception as exc:  # network, credentials, missing bucket
        raise InputError(f"model: could not list {path}: {exc}") from exc
    root = cache_folder() / "models"
    cache = root / hashlib.sha256(f"{path}\n{fingerprint}".encode()).hexdigest()[:16]
    if not (cache / "config.json").exists():
        fs, remote = open_fs(path)
        try:
            if not fs.exists(f"{remote.rstrip('/')}/config.json"):
                raise InputError(f"model: no config.json under {path}; upload a save_pretrained directory")
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=root))
            fs.get(remote.rstrip("/") + "/", str(staging), recursive=True)
        except InputError:
            raise
        except Exception as exc:  # network, credentials, missing bucket
            raise InputError(f"model: could not download {path}: {exc}") from exc
        if not cache.exists():
            staging.rename(cache)
    return cache


def load_model(
    path: str,
    *,
    layers: Sequence[str] = DEFAULT_LAYER_PATTERNS,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> LoadedModel:
    """Load a causal LM and its tokenizer from a local directory or an fsspec URL (s3://...)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    local = _local_checkpoint(path)
    if not (local / "config.json").exists():
        raise InputError(f"model: {path} has no config.json; save the model with save_pretrained")
    config = AutoConfig.from_pretrained(local, trust_remote_code=trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            local, config=config, dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code
        )
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise InputError(
                f"model: {path} is a {type(config).__name__} ({config.model_type}), which is not a causal "
                "language model; pretrace needs a checkpoint that AutoModelForCausalLM can load "
                "(e.g. Llama, GPT-2, GPT-NeoX, OLMo, Cohere)."
            ) from None
        raise
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
    return wrap_model(model, tokenizer, layers=layers, device=device, dtype=dtype)


def load_tokenizer(path: str, *, trust_remote_code: bool = False):
    """The checkpoint's tokenizer alone (tokenizing a corpus needs no weights)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_local_checkpoint(path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
