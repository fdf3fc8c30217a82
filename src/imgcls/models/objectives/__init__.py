"""One objective per task (`model.task`): OBJECTIVES[task] is its class (models/objectives/)."""

from imgcls.models.objectives.base import OBJECTIVES, Objective
from imgcls.models.objectives.multiclass import MulticlassObjective
from imgcls.models.objectives.multilabel import MultilabelObjective

__all__ = ["OBJECTIVES", "MulticlassObjective", "MultilabelObjective", "Objective"]
