"""rstick: sticky workflow runs and fast jobs on Redis Streams."""

from .app import Rstick
from .context import Context
from .definitions import StepDef, WorkflowDef
from .errors import (
    ClientClosed,
    DefinitionError,
    LoginFailed,
    PayloadTooLarge,
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
    TaskInputError,
    UnknownWorkflow,
    WorkerIdInUse,
)
from .records import Cancellation, Run, RunStatus, StepState, StepStatus, StickyStrategy, WorkerInfo
from .refs import AsyncRunRef, RunRef
from .worker import Worker

__all__ = [
    "AsyncRunRef",
    "Cancellation",
    "ClientClosed",
    "Context",
    "DefinitionError",
    "LoginFailed",
    "PayloadTooLarge",
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
    "TaskInputError",
    "UnknownWorkflow",
    "Worker",
    "WorkerIdInUse",
    "WorkerInfo",
    "WorkflowDef",
]
