"""Per-example matrices kept as rank-r factors, and inner products computed from the factors.

A (k_out, k_in) gradient X is stored as L R^T with L (k_out, r) and R (k_in, r): r (k_out + k_in)
numbers instead of k_out k_in. Query gradients (`query_rank`) and document gradients
(`document_rank`) are factored alike. Their inner products <X_q, X_d> are computed from the
factors without forming either matrix; a dense query meets documents expanded a chunk at a time,
the cheaper order when one side is dense anyway.
"""

from __future__ import annotations

import torch

CHUNK_NUMBERS = 1 << 24
"""How many intermediate numbers one chunk of documents may hold while scoring (64 MiB in float32)."""


def factorize(X: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best rank-``rank`` factors (L, R) of each (..., k_out, k_in) matrix (truncated SVD):
    L = U S is (..., k_out, r), R = V is (..., k_in, r), with r = min(rank, k_out, k_in)."""
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    r = min(rank, S.shape[-1])
    return U[..., :r] * S[..., None, :r], Vh[..., :r, :].transpose(-1, -2)


def inner_products(
    query: tuple[torch.Tensor, torch.Tensor | None],
    documents: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """(Q, N) inner products of query matrices with factored document matrices L_d R_d^T.

    ``query`` is (X, None) with X (Q, k_out, k_in), or factors (A (Q, k_out, r), B (Q, k_in, r)).
    Dense queries meet a chunk of documents expanded to L R^T: one (Q, k_out k_in) x (k_out k_in,
    chunk) product, where contracting each query with each document's factors, (X R) . L, would
    cost r times the operations. Factored queries: <A B^T, L R^T> = sum of (A^T L) * (B^T R)
    over the two ranks, no matrix expanded. Documents go in chunks that bound the intermediates.
    """
    A, B = query
    L, R = documents
    Q, N = A.shape[0], L.shape[0]
    out = torch.empty(Q, N, dtype=A.dtype, device=A.device)
    per_document = L.shape[1] * R.shape[1] if B is None else Q * A.shape[2] * L.shape[2]
    step = max(1, CHUNK_NUMBERS // max(1, per_document))
    for start in range(0, N, step):
        Lc, Rc = L[start : start + step].to(A), R[start : start + step].to(A)
        if B is None:
            out[:, start : start + step] = A.flatten(1) @ (Lc @ Rc.transpose(1, 2)).flatten(1).T
        else:
            left = torch.einsum("qor,noc->qnrc", A, Lc)
            right = torch.einsum("qir,nic->qnrc", B, Rc)
            out[:, start : start + step] = (left * right).sum(dim=(2, 3))
    return out


def captured_inner_products(query: tuple[torch.Tensor, torch.Tensor], a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """(Q, B) inner products of factored query matrices A_q B_q^T with each sequence's gradient
    sum_t g_t a_t^T, from the per-token a (B, T, k_in) and g (B, T, k_out) alone:
    <A B^T, sum_t g_t a_t^T> = sum over t and rank j of (g_t . A_j)(a_t . B_j). Neither the
    (k_out, k_in) document gradient nor a dense query is formed; queries go in chunks that bound
    the (B, T, chunk x r) intermediates."""
    A, B = query
    Q, k_out, r = A.shape
    batch, tokens = a.shape[0], a.shape[1]
    out = torch.empty(Q, batch, dtype=A.dtype, device=A.device)
    step = max(1, CHUNK_NUMBERS // max(1, batch * tokens * r))
    for start in range(0, Q, step):
        Ac, Bc = A[start : start + step], B[start : start + step]
        n = Ac.shape[0]
        gA = g.to(A) @ Ac.permute(1, 0, 2).reshape(k_out, n * r)
        aB = a.to(A) @ Bc.permute(1, 0, 2).reshape(Bc.shape[1], n * r)
        out[start : start + n] = (gA * aB).view(batch, tokens, n, r).sum(dim=(1, 3)).T
    return out
