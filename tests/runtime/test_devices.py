"""The device a person names (duplex/runtime/devices.py): checked against this machine, in the library's words."""

import pytest
import torch

from duplex.errors import UsageError
from duplex.runtime.devices import pick_device


def test_auto_is_cuda_when_there_is_one():
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name, words", [("tpu", "device 'tpu': not a device name (cpu, cuda, cuda:N or auto)"),
                                         ("meta", "device 'meta': duplex runs on cpu or cuda"),
                                         ("cuda:99", "device cuda:99: ")])
def test_devices_this_machine_cannot_run_are_refused(name, words):
    with pytest.raises(UsageError) as refused:
        pick_device(name)
    assert str(refused.value).startswith(words) and "--" not in str(refused.value)
