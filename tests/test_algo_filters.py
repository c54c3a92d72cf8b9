"""The accuracy-band group filter."""

import pytest
import torch

from iprime.algo import filter_groups

T = torch.tensor


def test_filter_keeps_groups_inside_inclusive_bounds():
    outcome = T([1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], dtype=torch.float32)
    truncated = torch.zeros(25, dtype=torch.bool)
    keep = filter_groups(outcome, truncated, group_size=5)
    # accuracies .2 (kept, bound inclusive), .8 (kept), 0, 1 (dropped), .4 (kept)
    assert keep.view(5, 5).all(1).tolist() == [True, True, False, False, True]
    assert torch.equal(keep.view(5, 5).any(1), keep.view(5, 5).all(1))  # whole groups only


def test_filter_drops_groups_with_a_truncated_response():
    outcome = T([1.0, 0.0, 1.0, 0.0])
    truncated = T([False, True, False, False])
    assert filter_groups(outcome, truncated, 2).tolist() == [False, False, True, True]
    assert filter_groups(outcome, truncated, 2, drop_truncated=False).tolist() == [True] * 4
    assert filter_groups(outcome, None, 2, drop_truncated=False).tolist() == [True] * 4


def test_custom_band():
    outcome = T([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert filter_groups(outcome, None, 3, low=0.0, high=1.0, drop_truncated=False).all()
    assert filter_groups(outcome, None, 3, low=0.5, high=1.0, drop_truncated=False).tolist() == [True] * 3 + [False] * 3


@pytest.mark.parametrize(
    "call",
    [
        lambda: filter_groups(torch.zeros(5), torch.zeros(5, dtype=torch.bool), 2),
        lambda: filter_groups(torch.zeros(4), torch.zeros(3, dtype=torch.bool), 2),
        lambda: filter_groups(torch.zeros(4), None, 2),
        lambda: filter_groups(T([0.0, float("nan")]), None, 2, drop_truncated=False),
        lambda: filter_groups(torch.zeros(4), None, 2, low=0.9, high=0.1, drop_truncated=False),
        lambda: filter_groups(torch.zeros(2, 2), None, 2, drop_truncated=False),
    ],
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()
