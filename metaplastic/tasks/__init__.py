from metaplastic.tasks.base import Episodes, check_finite
from metaplastic.tasks.classification import ClassificationStream
from metaplastic.tasks.registry import TASKS, build_task
from metaplastic.tasks.sine import SineRegression

__all__ = ["TASKS", "ClassificationStream", "Episodes", "SineRegression", "build_task", "check_finite"]
