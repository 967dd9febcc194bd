"""msc-cascade: the cascade decoder (CascadeV) with grid 3D attention, and ONNX deployment of the decoders."""

from msc_core.lazy_exports import distribution_version

__version__ = distribution_version("msc-cascade")
