"""Domain similarity and feature transferability on feature arrays (and on images, through one
encoder: :mod:`medtl.similarity.images`), and method recommendation."""

from medtl.similarity.assess import METRICS, assess, to_json, to_table
from medtl.similarity.distances import frechet_distance, linear_cka, mmd, mmd_test, proxy_a_distance
from medtl.similarity.images import compare_manifests, load_encoder, matrix_tables, similarity_matrix
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
    "compare_manifests",
    "load_encoder",
    "matrix_tables",
    "similarity_matrix",
    "compare_outcome",
    "recommend",
    "h_score",
    "leep",
    "logme",
]
