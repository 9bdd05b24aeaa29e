"""Hospital batch inference: folder / manifest / DICOMweb -> series -> model -> CSV + JSON lines + DICOM SR.

``predict_batch(model, input, out, ...)`` runs a job (resumable; see ``batch``), ``load_model`` reads a
checkpoint or MONAI bundle into a :class:`Predictor`, ``export_bundle`` writes a MONAI bundle.
"""

from medtl.deploy.batch import BatchResult, discover, predict_batch
from medtl.deploy.bundle import export_bundle
from medtl.deploy.discover import Series, SeriesRules, scan_folder, scan_manifest
from medtl.deploy.model import Predictor, load_bundle, load_model
from medtl.deploy.sr import build_sr, sr_summary
from medtl.deploy.uids import is_valid_uid, safe_name

__all__ = ["BatchResult", "Predictor", "Series", "SeriesRules", "build_sr", "discover", "export_bundle",
           "is_valid_uid", "load_bundle", "load_model", "predict_batch", "safe_name", "scan_folder", "scan_manifest",
           "sr_summary"]
