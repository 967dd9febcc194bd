"""msc-ray-train: the Ray Train training service and the `msc` command line.

- `TrainJob`, `load_job`: one YAML file describes a training run (`job`).
- `MODEL_KINDS`: the model kinds a job can train (`model_kinds`).
- `run_training`: run a job on Ray Train's TorchTrainer; re-running resumes (`launch`).
- `load_trained_model`, `generate_video`: sample from a run (`sampling`).
- `run_demo`: the `msc demo` job (`demo`); `msc_ray_train.cli:main` is `msc`.

Ray itself is imported only when a run starts.
"""

from msc_ray_train.job import TrainJob, job_from_dict, load_job
from msc_ray_train.launch import TrainingDiverged, TrainingFailed, TrainOutcome, run_training
from msc_ray_train.model_kinds import MODEL_KINDS, ModelKind
from msc_ray_train.sampling import generate_video, load_trained_model

__all__ = [
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
