"""Evaluation: zero-shot classification, retrieval, metrics with bootstrap CIs, calibration and plots.

Submodules are imported where used (``from medclip.eval.retrieval import retrieval_metrics``) so that
importing :mod:`medclip.eval` stays cheap; matplotlib and scikit-learn load only when needed.
"""
