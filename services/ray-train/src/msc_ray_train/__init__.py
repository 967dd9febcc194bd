"""msc-ray-train: the Ray Train training service and the `msc` command line.

- `TrainJob`, `load_job`: one YAML file describes a training run (`job`).
- `MODEL_KINDS`: the model kinds a job can train (`model_kinds`).
- `run_training`: run a job on Ray Train's TorchTrainer; re-running resumes (`launch`).
- `load_trained_model`, `generate_video`: sample from a run (`sampling`).
- `run_demo`: the `msc demo` job (`demo`); `msc train|sample|demo` are in `commands`.

Ray itself is imported only when a run starts.
"""

from __future__ import annotations

from msc_core.lazy_exports import distribution_version, lazy_exports

__version__ = distribution_version("msc-ray-train")

# imported on first use: `msc --help` lists `msc train` without importing Ray or the models
_LAZY = {
    "MODEL_KINDS": "msc_ray_train.model_kinds",
    "ModelKind": "msc_ray_train.model_kinds",
    "TrainJob": "msc_ray_train.job",
    "TrainOutcome": "msc_ray_train.launch",
    "TrainingDiverged": "msc_ray_train.launch",
    "TrainingFailed": "msc_ray_train.launch",
    "generate_video": "msc_ray_train.sampling",
    "job_from_dict": "msc_ray_train.job",
    "load_job": "msc_ray_train.job",
    "load_trained_model": "msc_ray_train.sampling",
    "run_training": "msc_ray_train.launch",
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())

__all__ = [
    "__version__",
    "MODEL_KINDS",
    "ModelKind",
    "TrainJob",
    "TrainOutcome",
    "TrainingDiverged",
    "TrainingFailed",
    "generate_video",
    "job_from_dict",
    "load_job",
    "load_trained_model",
    "run_training",
]
