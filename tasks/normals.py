"""Surface-normal probe (Probe3D protocol): DPT on ``encoder.dpt_layers`` (a linear head as an option).

Probe3D's recipe: the head predicts xyz plus a concentration kappa and is
trained with the uncertainty-aware angular loss of Bae et al.
(``normals_loss="uncertainty"``; ``"angular"`` = plain mean angle, 3
outputs), 10 epochs x 8, AdamW 5e-4, cosine with 1.5 warm-up epochs.
Predictions are the L2-normalised xyz, compared at the label resolution over
valid pixels: angular_rmse (headline), mean, median, % within 11.25 / 22.5 /
30 degrees, per image then averaged (Probe3D ``evaluate_surface_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass

from tips_eval.task_api import TaskResult, register_task

from ._dense import DenseConfig, run_dense
from ._dense_heads import NORMALS_LOSSES


@dataclass
class NormalsConfig(DenseConfig):
    head: str = "dpt"  # dpt | linear
    normals_loss: str = "uncertainty"  # uncertainty (Probe3D, 4 outputs) | angular (3 outputs)


@register_task("normals", NormalsConfig, roles=("train", "test"), description="surface normals probe (angular RMSE)")
def run(encoder, data, cfg: NormalsConfig, ctx) -> TaskResult:
    from tips_eval.errors import DataError

    if cfg.normals_loss not in NORMALS_LOSSES:
        raise DataError(f"normals_loss={cfg.normals_loss!r}; expected one of {', '.join(NORMALS_LOSSES)}")
    outputs = 4 if cfg.normals_loss == "uncertainty" else 3
    loss = ("uncertainty-aware angular loss (Bae et al.; kappa = ELU + 1.01)" if outputs == 4
            else "mean angular error acos(cos) over valid pixels")
    return run_dense(
        encoder, data, cfg, ctx, "normals", num_outputs=outputs, loss_kw={"normals_loss": cfg.normals_loss},
        head_kw={}, target_kw={}, eval_kw={"headline": "angular_rmse"},
        protocol_extra={"normals_loss": cfg.normals_loss, "loss": loss, "outputs": outputs,
                        "normals_frame": "camera frame (x right, y down, z forward), unit vectors",
                        "metric_reduction": "per image over valid pixels, then mean"})
