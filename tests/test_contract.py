"""The model contract (tests/contract.py) for each kind of DLA graph, on tiny architectures, on this backend.

tools/test.sh runs this file on TensorFlow, JAX and PyTorch.
"""

import pytest

from tests import contract


@pytest.mark.parametrize("kind", list(contract.TINY_ARCHITECTURES))
def test_classifier_contract(kind, tmp_path):
    contract.run_classifier_contract(contract.TINY_ARCHITECTURES[kind], tmp_path)


def test_dla_up_contract(tmp_path):
    contract.run_dla_up_contract(contract.TINY_ARCHITECTURES["basic"], tmp_path)


def test_dla_up_training_step():
    contract.run_dla_up_training_step(contract.TINY_ARCHITECTURES["basic"])
