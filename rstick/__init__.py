"""rstick: sticky workflow runs and fast jobs on Redis Streams."""

from .app import Rstick, StepDef, WorkflowDef
from .client import AsyncRunRef, RunRef
from .context import Context
from .errors import (
    ClientClosed,
    DefinitionError,
    PoolTimeout,
    ResultTimeout,
    RstickError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    SchedulingTimeout,
    SerializationError,
    StepTimeout,
    StickyChildError,
    UnknownWorkflow,
)
from .records import Run, RunStatus, StepState, StepStatus, StickyStrategy, WorkerInfo
from .worker import Worker

__all__ = [
    "AsyncRunRef",
    "ClientClosed",
    "Context",
    "DefinitionError",
    "PoolTimeout",
    "ResultTimeout",
    "Rstick",
    "RstickError",
    "Run",
    "RunCancelled",
    "RunFailed",
    "RunNotFound",
    "RunRef",
    "RunStatus",
    "SchedulingTimeout",
    "SerializationError",
    "StepDef",
    "StepState",
    "StepStatus",
    "StepTimeout",
    "StickyChildError",
    "StickyStrategy",
    "UnknownWorkflow",
    "Worker",
    "WorkerInfo",
    "WorkflowDef",
]
