"""The corpus and the special checks of test_corpus.py on a real GPU: the same code, target="cuda".

Everything here comes from tests/corpus.py (kernels, points, finite differences, expected
failures); only the target differs from the cpu run. Skipped without a GPU (conftest.py).
"""
from __future__ import annotations

import corpus
import pytest
from corpus import check_forward, check_reverse, corpus_params

pytestmark = pytest.mark.gpu

TARGET = "cuda"


@pytest.mark.parametrize("entry", corpus_params("reverse", TARGET))
def test_reverse_in_cuda_kernel(entry):
    assert check_reverse(entry, TARGET) >= corpus.POINTS // 2


@pytest.mark.parametrize("entry", corpus_params("forward", TARGET))
def test_forward_in_cuda_kernel(entry):
    assert check_forward(entry, TARGET) >= corpus.POINTS // 2


def test_tape_overflow_on_cuda_raises_and_leaves_results_untouched():
    corpus.check_tape_overflow(TARGET)


def test_4096_threads_accumulate_into_one_shadow_element_exactly():
    corpus.check_atomic_accumulation(TARGET, n=4096)


def test_hessian_vector_product_in_cuda_kernel():
    corpus.check_hvp_kernel(TARGET)


@pytest.mark.parametrize("entry", corpus.hvp_params())
def test_hessian_vector_products_over_the_corpus_in_cuda_kernels(entry):
    assert corpus.check_hvp(entry, TARGET) >= corpus.POINTS // 4
