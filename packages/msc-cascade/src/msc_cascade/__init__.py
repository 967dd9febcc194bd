"""msc-cascade: the cascade decoder (CascadeV) with grid 3D attention, and ONNX deployment of the decoders."""
