"""The training configuration: every CLI knob, defaults as the benchmark measured."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.extra_data import ExtraConfig


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the CNN: `blocks` convolution blocks, each two 3x3 convolutions then max-pooling.

    Filters double from block to block, as in the classic LeNet/VGG designs.
    """

    blocks: int = 2
    filters: int = 24
    dense_units: int = 128
    dropout: float = 0.1
    dense_dropout: float = 0.3
    batch_norm: bool = True


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path | None = None
    model_repository: Path = Path("models")
    model_name: str = "mnist"
    epochs: int = 14
    batch_size: int = 128
    learning_rate: float = 3e-3
    seed: int = 42
    validation_split: float = 0.05
    augment: bool = True
    extra: ExtraConfig | None = field(default_factory=ExtraConfig)
    """Perturbed copies, rendered digits and not-a-digit pictures (None: MNIST only)."""
    clean_epochs: int = 2
    """The last `clean_epochs` epochs see MNIST's digits as they are: no augmentation, none
    perturbed (the rendered extras stay), so training ends on the distribution it is judged on."""
    ema: bool = False
    """Export an exponential moving average of the weights (smoother than the last step)."""
    limit: int | None = None
    """Train on the first `limit` training images only (quick runs, tests)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    reports: bool = True
    verbose: int = 1

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["data_dir"] = str(self.data_dir) if self.data_dir else None
        data["model_repository"] = str(self.model_repository)
        return data
