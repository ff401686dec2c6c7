"""Post-processing on the cluster: MOQUI output -> DICOM RT Dose per beam, plan sum, summary.

Run as ``python -m mqi.post BUNDLE_DIR`` by the bundle's post job.
"""

from mqi.post.run import postprocess_bundle

__all__ = ["postprocess_bundle"]
