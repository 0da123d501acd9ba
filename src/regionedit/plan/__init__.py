"""Memory before the run: the expected peak accelerator memory of a LoMOE edit, from a model's
configs alone (:func:`plan_memory`), and the chunk size that fits a budget."""

from .estimate import MemoryPlan, plan_memory
from .shape import ModelShape, shape_of_configs, shape_of_folder, shape_of_model

__all__ = ["MemoryPlan", "ModelShape", "plan_memory", "shape_of_configs", "shape_of_folder", "shape_of_model"]
