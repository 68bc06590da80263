"""Built-in training tasks and the Task API.

``Task`` is the contract (see :mod:`dai_swarm.tasks.base`); ``load_task`` resolves a built-in name
(``tinylm``, ``tinylm-small``, ``regression``) or a user ``module:attr`` and checks its contract
(``validate_task``, :mod:`dai_swarm.tasks.contract`).
"""

from .base import Task
from .contract import contract_checks, validate_task
from .corpus import unigram_entropy
from .registry import BUILTIN_TASKS, load_task
from .regression import RegressionTask
from .tinylm import TinyLMTask

__all__ = ["BUILTIN_TASKS", "RegressionTask", "Task", "TinyLMTask", "contract_checks", "load_task", "unigram_entropy",
           "validate_task"]
