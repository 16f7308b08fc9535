"""The `autoscale:` section of fleet.yaml: one policy per service (docs/autoscaling.md).

```yaml
autoscale:
  web: {mode: advise, cpu_percent: 60, p95_ms: 250, rps_per_replica: 40}
  worker: {mode: auto, queue_backlog: {queues: ["main/bull:emails"], per_worker: 100}}
```
Every model forbids unknown keys; `FleetConfig` checks that each key names a service.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.config_alerts import Duration

Mode = Literal["off", "advise", "auto"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class QueueBacklogTarget(_Strict):
    # bullmq targets as the collector names them: "<redis name>/<prefix>:<queue>"
    queues: Annotated[list[str], Field(min_length=1)]
    per_worker: Annotated[float, Field(gt=0)]  # waiting jobs one replica should have at most


class AutoscalePolicy(_Strict):
    mode: Mode = "advise"
    # targets; any combination, at least one. The desired count is the largest any of them asks for.
    cpu_percent: Annotated[float, Field(gt=0, le=6400)] | None = None  # mean CPU % per replica
    p95_ms: Annotated[float, Field(gt=0)] | None = None  # upstream p95 latency through the load balancer
    rps_per_replica: Annotated[float, Field(gt=0)] | None = None  # requests/s per replica
    queue_backlog: QueueBacklogTarget | None = None  # waiting jobs per replica (KEDA-style)
    tolerance: Annotated[float, Field(ge=0, lt=1)] = 0.10  # |metric/target - 1| within this: no change
    interval_s: Duration = Field(default=15.0, alias="interval")  # one decision per interval
    scale_up_window_s: Duration = Field(default=0.0, alias="scale_up_window")  # lowest recommendation of the window
    scale_down_window_s: Duration = Field(default=300.0, alias="scale_down_window")  # highest of the window
    max_step_up: Annotated[int, Field(ge=1, le=100)] = 4  # replicas added per decision at most
    max_step_down: Annotated[int, Field(ge=1, le=100)] = 1  # replicas removed per decision at most
    pause_after_manual_s: Duration = Field(default=600.0, alias="pause_after_manual")  # never fight an operator
    metrics_max_age_s: Duration = Field(default=30.0, alias="metrics_max_age")  # older samples are no data

    @model_validator(mode="after")
    def _has_a_target(self) -> AutoscalePolicy:
        if not any(v is not None for v in (self.cpu_percent, self.p95_ms, self.rps_per_replica,
                                           self.queue_backlog)):
            raise ValueError("a policy needs at least one of cpu_percent, p95_ms, rps_per_replica, queue_backlog")
        if self.interval_s < 1:
            raise ValueError("interval must be at least 1s")
        return self
