from metaplastic.tasks.base import Episodes, check_finite
from metaplastic.tasks.registry import TASKS, build_task
from metaplastic.tasks.sine import SineRegression

__all__ = ["TASKS", "Episodes", "SineRegression", "build_task", "check_finite"]
