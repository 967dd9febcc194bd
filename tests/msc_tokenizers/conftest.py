"""Tokenizer tests run tiny models: one intra-op thread avoids thread start-up and
barrier costs that dominate such small ops (and oversubscription on shared CPUs)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
