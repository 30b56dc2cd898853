"""medclip_adapters: limited-data adaptation of a frozen medclip CLIP model.

One interface (:class:`FewShotMethod`: ``fit(train, val)``, ``predict_proba(test)``, ``save(dir)``,
``load(dir)``), methods registered by name: ``zeroshot`` (baseline), ``probe``, ``coop``,
``clip-adapter``, ``tip-adapter`` (``finetune=True`` for Tip-Adapter-F) and ``lora``. Image features
of the frozen image tower are computed once through a :class:`FeatureCache`; the task (classes,
prompts, labels) is :class:`medclip.eval.task.Task`, shared with zero-shot evaluation.

This package imports medclip; medclip never imports it.
"""

from medclip.eval.task import Task

from . import clip_adapter, coop, lora, probe, tip_adapter, zeroshot  # noqa: F401  (register the methods)
from .base import (
    FewShotMethod,
    create_method,
    get_method_class,
    list_methods,
    load_method,
    register_method,
)
from .cache import FeatureCache

__all__ = ["FeatureCache", "FewShotMethod", "Task", "create_method", "get_method_class", "list_methods",
           "load_method", "register_method"]
