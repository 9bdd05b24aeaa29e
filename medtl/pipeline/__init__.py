"""Pipelines: YAML configs (config.py) and the resumable stage runner behind `medtl run` (runner.py)."""

from medtl.pipeline.config import PipelineConfig, load_pipeline
from medtl.pipeline.runner import run_pipeline

__all__ = ["PipelineConfig", "load_pipeline", "run_pipeline"]
