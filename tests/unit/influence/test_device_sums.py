"""Fitting sums on the device (`DeviceSum`, `BlockDiagonalSum`): float32 terms folded into a
float64 total, against float64 sums computed term by term."""

import torch

from pretrace.influence.distributed import SINGLE
from pretrace.influence.ekfac import BlockDiagonalSum, DeviceSum, _device_totals


def test_a_float32_running_sum_alone_drops_small_terms_that_the_float64_total_keeps():
    """A long shard's sum: 1 then 4096 terms of 1e-8. In float32 each 1e-8 is below half an ulp
    of 1 and vanishes; folded into float64 every 64 terms, only the terms that share a window
    with the 1 are lost (63 of them), the other windows' add up first."""
    total = DeviceSum(1, 1, torch.device("cpu"))
    naive = torch.ones(1, 1, dtype=torch.float32)
    total.add(torch.ones(1, 1))
    for _ in range(4096):
        total.add(torch.full((1, 1), 1e-8))
        naive += torch.full((1, 1), 1e-8)
    assert float(naive) == 1.0
    expected = 1.0 + 4096 * float(torch.tensor(1e-8, dtype=torch.float32))
    assert abs(float(naive) - expected) > 4e-5
    assert abs(float(total.total()) - expected) < 64e-8
    assert total.total().dtype == torch.float64


def test_block_diagonal_sums_hold_only_the_diagonal_blocks_of_the_float64_gram_sum():
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(30, 10, generator=g) for _ in range(150)]  # more terms than one flush
    dense = sum(x.double().T @ x.double() for x in xs)
    for block_size, blocks in ((None, [slice(0, 10)]), (4, [slice(0, 3), slice(3, 6), slice(6, 10)])):
        total = BlockDiagonalSum(10, torch.device("cpu"), block_size)
        for x in xs:
            total.add_gram(x)
        parts = total.parts()
        assert [p.shape for p in parts] == [(b.stop - b.start,) * 2 for b in blocks]  # nothing off the blocks
        for block, part in zip(blocks, parts, strict=True):
            torch.testing.assert_close(part, dense[block, block], rtol=0, atol=1e-6 * float(dense.abs().max()))
        mask = torch.zeros(10, 10, dtype=torch.bool)
        for block in blocks:
            mask[block, block] = True
        whole = total.whole(parts)  # the stored square: the blocks on its diagonal, zero elsewhere
        assert whole.shape == (10, 10)
        torch.testing.assert_close(whole[mask], dense[mask], rtol=0, atol=1e-6 * float(dense.abs().max()))
        assert not whole[~mask].any()


class _TwoEqualRanks:
    """Stands in for two ranks that summed the same terms: the all-reduce doubles each tensor."""

    def __init__(self) -> None:
        self.reduced: list[tuple[int, ...]] = []

    def sum_(self, tensors):
        for tensor in tensors:
            self.reduced.append(tuple(tensor.shape))
            tensor.mul_(2)


def test_the_ranks_all_reduce_the_blocks_alone_and_get_the_square_of_their_sums():
    x = torch.randn(20, 10, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    total = BlockDiagonalSum(10, torch.device("cpu"), 4)
    total.add_gram(x)
    expected = total.whole([p.clone() for p in total.parts()])
    ranks = _TwoEqualRanks()
    got = _device_totals({"layer": total}, "covariance", ranks)["layer"]
    assert ranks.reduced == [(3, 3), (3, 3), (4, 4)]
    torch.testing.assert_close(got, 2 * expected, rtol=0, atol=0)
    assert torch.equal(_device_totals({"layer": total}, "covariance", SINGLE)["layer"], 2 * expected)


def test_float64_terms_are_summed_in_float64():
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(100)]
    total = DeviceSum(5, 5, torch.device("cpu"))
    for x in xs:
        total.add_gram(x)
    torch.testing.assert_close(total.total(), sum(x.T @ x for x in xs), rtol=1e-13, atol=1e-12)
