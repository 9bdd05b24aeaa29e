"""Domain similarity and feature transferability on feature arrays, and method recommendation."""

from medtl.similarity.assess import METRICS, assess, to_json, to_table
from medtl.similarity.distances import frechet_distance, linear_cka, mmd, mmd_test, proxy_a_distance
from medtl.similarity.recommend import compare_outcome, recommend
from medtl.similarity.transferability import h_score, leep, logme

__all__ = [
    "METRICS",
    "assess",
    "to_json",
    "to_table",
    "frechet_distance",
    "linear_cka",
    "mmd",
    "mmd_test",
    "proxy_a_distance",
    "compare_outcome",
    "recommend",
    "h_score",
    "leep",
    "logme",
]
