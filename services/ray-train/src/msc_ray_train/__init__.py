"""msc-ray-train: Ray Train service and the msc command line."""
