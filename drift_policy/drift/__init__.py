"""The drift field and loss: one pure module shared by the policies and image_gen."""
from drift_policy.drift.field import (DriftConfig, DriftOutput, chunked_drift, compute_drift, drift_field, drift_loss,
                                      pairwise_l2, sample_spread)

__all__ = ["DriftConfig", "DriftOutput", "chunked_drift", "compute_drift", "drift_field", "drift_loss", "pairwise_l2",
           "sample_spread"]
