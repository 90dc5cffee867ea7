"""INT8 calibration of the vision encoder: `python -m calib --engine DIR --images FOLDER_OR_VIDEO`."""
