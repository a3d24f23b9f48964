"""A tiny model's EK-FAC fit and document gradients, run as one process or under ``torchrun``
(gloo on CPUs): what tests compare to show that data parallel changes nothing but rounding.

    torchrun --nproc-per-node 2 -m pretrace.testing.distributed_fit OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from pretrace.influence.distributed import process_group
from pretrace.influence.document_gradients import compute_document_gradients_by_rank
from pretrace.influence.ekfac import eigenbasis, fit_covariances, fit_lambdas, make_factors
from pretrace.inputs.batching import batches
from pretrace.model.adapter import wrap_model
from pretrace.testing.tiny import random_sequences, tiny_model

DOCUMENTS, BATCH_SIZE, SEED = 22, 4, 3  # 6 batches, the last one short: ranks get unequal documents
STORES = {"dense": {}, "factored": {"rank": 2, "stored_dtype": "int8"}}


def fit_and_store(out: Path) -> None:
    """Covariances, eigenbasis, eigenvalue corrections, factors and two document stores of the
    tiny model, each saved to ``out`` as safetensors by the writing rank."""
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with process_group("cpu") as ranks:
        lm = wrap_model(tiny_model("llama"), device="cpu")
        sequences = random_sequences(DOCUMENTS, seed=5)
        ids = [f"doc-{i}" for i in range(DOCUMENTS)]

        def data():
            return (b for _, b in batches(sequences, BATCH_SIZE, 0))

        covariances = fit_covariances(lm, data(), "sampled", SEED, ranks=ranks)
        basis = eigenbasis(covariances)
        lambdas = fit_lambdas(lm, basis, data(), "sampled", SEED, ranks=ranks)
        states = {"covariances": covariances, "eigenbasis": basis, "lambdas": lambdas}
        states["factors"] = make_factors(basis, lambdas)
        for name, options in STORES.items():
            states[name] = compute_document_gradients_by_rank(
                lm, sequences, ids, ranks, batch_size=BATCH_SIZE, **options
            )
        if ranks.writes:
            for name, state in states.items():
                tensors, metadata = state.to_tensors()
                save_file({k: v.contiguous() for k, v in tensors.items()}, out / f"{name}.safetensors", metadata)
        ranks.barrier()


if __name__ == "__main__":
    fit_and_store(Path(sys.argv[1]))
