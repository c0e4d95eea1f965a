"""Hardware detection, model and GPU catalogs, sizing and roofline math, and the ranked
optimization plan (python -m planner detect | recommend | compare)."""

from planner.catalog import load_catalog
from planner.entrypoints import compare_run, make_plan
from planner.hardware import Hardware, detect
from planner.recommend import Plan, PlanOption
from planner.workload import RecommendOptions

__all__ = ["Hardware", "Plan", "PlanOption", "RecommendOptions", "compare_run", "detect", "load_catalog", "make_plan"]
