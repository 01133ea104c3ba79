import pytest
import torch

from realuid.tensors import check_batch, check_same_shape, standard_normal_like


def test_check_batch_accepts_batches_and_names_the_bad_input():
    x = torch.zeros(3, 2)
    assert check_batch(x, "x") is x
    assert check_batch(torch.zeros(3, 1, dtype=torch.long), "labels") is not None  # only shape by default
    with pytest.raises(ValueError, match=r"^x0 must be a torch.Tensor, got list$"):
        check_batch([[0.0]], "x0")
    with pytest.raises(ValueError, match=r"^x0 must have shape \[B, \.\.\.\] with at least one non-batch dim, got \(3,\)$"):
        check_batch(torch.zeros(3), "x0")
    with pytest.raises(ValueError, match=r"^noise must be a floating-point tensor, got torch.int64$"):
        check_batch(torch.zeros(3, 1, dtype=torch.long), "noise", floating=True)


def test_check_same_shape_names_both():
    check_same_shape(torch.zeros(2, 3), torch.ones(2, 3), "a", "b")
    with pytest.raises(ValueError, match=r"^a has shape \(2, 3\) but b has shape \(2, 4\)$"):
        check_same_shape(torch.zeros(2, 3), torch.zeros(2, 4), "a", "b")


def test_standard_normal_like_is_the_rng_stream_in_the_like_dtype():
    like = torch.empty(4, 3, dtype=torch.float64)
    noise = standard_normal_like(like, torch.Generator().manual_seed(7))
    assert noise.shape == like.shape and noise.dtype == torch.float64
    torch.testing.assert_close(noise, torch.randn(4, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64),
                               rtol=0, atol=0)
    torch.manual_seed(3)
    unseeded = standard_normal_like(like, None)
    torch.manual_seed(3)
    torch.testing.assert_close(unseeded, torch.randn_like(like), rtol=0, atol=0)
