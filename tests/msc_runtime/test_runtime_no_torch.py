"""msc_runtime never imports torch, msc_core, onnx or pydantic, not even transitively.

Checked in a fresh interpreter of this environment (where, in the workspace, torch IS
importable) after every runner and the command ran on the fixtures.
"""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("torch", "msc_core", "msc_cascade", "msc_tokenizers", "onnx", "pydantic")

SCRIPT = r"""
import sys
from pathlib import Path
import numpy as np

fixtures = Path(sys.argv[1])
import msc_runtime
assert not any(m == "onnxruntime" or m.startswith("onnxruntime.") for m in sys.modules), "import is not lazy"
from msc_runtime import ARVAEDecoder, CascadeRefiner, RefineSettings, VAEDecoder, VAEEncoder
from msc_runtime.cli import main

data = dict(np.load(fixtures / "expected.npz"))
cpu = ["CPUExecutionProvider"]
vae = VAEDecoder(fixtures / "vae_decoder.onnx", providers=cpu)
vae.decode(data["vae_decode_latents"])
list(vae.stream([data["vae_decode_latents"][:, :, :1], data["vae_decode_latents"][:, :, 1:]]))
ARVAEDecoder(fixtures / "arvae_decoder.onnx", providers=cpu).decode(data["arvae_latents"])
refiner = CascadeRefiner(fixtures, RefineSettings(tile_size=6, window_frames=1, window_overlap=0), providers=cpu)
refiner.decode(data["refine_base"], seed=1)
if (fixtures / "vae_encoder.onnx").exists():
    VAEEncoder(fixtures / "vae_encoder.onnx", providers=cpu).encode(data["vae_encode_video"])
    refiner.upscale(data["upscale_input"], seed=1)
assert main(["--version"]) == 0
forbidden = sys.argv[2].split(",")
loaded = sorted(m for m in sys.modules if m.split(".")[0] in forbidden)
print("LOADED", loaded)
"""


def test_runners_and_the_command_import_no_torch(fixtures):
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(fixtures), ",".join(FORBIDDEN)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "LOADED []" in run.stdout, run.stdout
