"""Running a graph with its tensors where the session computes: IOBinding on CUDA, `run` on CPU.

`GraphRunner.run` takes numpy arrays or device values (`put`) and returns, for the output
names in `keep`, device values that the next call takes as inputs without a round trip
through host memory: the cascade's `x_t` stays on the GPU between DDIM steps and a VAE
decoder's cache between chunks. `GraphRunner.bind` holds inputs bound across calls: the
cascade condition `base_up` is copied to the device and bound once per window/tile.

On the CPU provider the runner calls plain `session.run` (a device value is then just the
numpy array): the same numbers, no binding overhead. `binding=True` forces IOBinding on any
provider (tests exercise the CUDA code path on a CPU session this way; bench/runtime.py
compares both on CUDA).
"""

from __future__ import annotations

from typing import Any, Collection, Mapping

import numpy as np

from msc_runtime.sessions import GraphSession, require_onnxruntime

DeviceValue = Any  # np.ndarray (plain run) or onnxruntime.OrtValue (IOBinding)


class GraphRunner:
    """Calls of one `GraphSession` with device-resident inputs and outputs when bound."""

    def __init__(self, graph: GraphSession, binding: bool | None = None) -> None:
        self.graph = graph
        self.binding = graph.device == "cuda" if binding is None else bool(binding)
        self.device, self.device_id = graph.device, graph.device_id
        self._ort = require_onnxruntime() if self.binding else None

    def put(self, array: np.ndarray) -> DeviceValue:
        """A host array as a value on the session's device (a copy; the array itself when not bound)."""
        if not self.binding:
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(np.array(array, copy=True, order="C"), self.device, self.device_id)

    @staticmethod
    def fetch(value: DeviceValue) -> np.ndarray:
        """A device value back in host memory."""
        return value if isinstance(value, np.ndarray) else value.numpy()

    def bind(self, inputs: Mapping[str, DeviceValue] | None = None) -> "BoundCall":
        """A call whose `inputs` stay bound until rebound (one IOBinding reused across runs)."""
        call = BoundCall(self)
        for name, value in (inputs or {}).items():
            call.bind(name, value)
        return call

    def run(self, feeds: Mapping[str, DeviceValue], keep: Collection[str] = ()) -> dict[str, DeviceValue]:
        """Outputs by name: device values for the names in `keep`, numpy arrays otherwise."""
        return self.bind(feeds).run(keep)


class BoundCall:
    """Inputs bound to one graph across runs (IOBinding), or a dict of feeds without binding."""

    def __init__(self, runner: GraphRunner) -> None:
        self.runner = runner
        self.feeds: dict[str, DeviceValue] = {}
        self.io = runner.graph.session.io_binding() if runner.binding else None

    def bind(self, name: str, value: DeviceValue) -> None:
        self.feeds[name] = value
        if self.io is None:
            return
        if isinstance(value, np.ndarray):
            value = self.runner.put(value)
            self.feeds[name] = value  # keep it alive while bound
        self.io.bind_ortvalue_input(name, value)

    def run(self, keep: Collection[str] = ()) -> dict[str, DeviceValue]:
        graph = self.runner.graph
        names = graph.output_names
        if self.io is None:
            return dict(zip(names, graph.run(self.feeds)))
        self.io.clear_binding_outputs()
        for name in names:
            # ONNX Runtime allocates each output where it is bound: on the device for what the next call reads
            self.io.bind_output(name, self.runner.device if name in keep else "cpu", self.runner.device_id)
        try:
            graph.session.run_with_iobinding(self.io)
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise graph.run_error(self.feeds, err) from None
        values = self.io.get_outputs()
        return {name: value if name in keep else value.numpy() for name, value in zip(names, values)}
