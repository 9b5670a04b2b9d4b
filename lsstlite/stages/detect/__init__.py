"""Coadd detection and the merge of detections across bands (``merged_det``)."""
