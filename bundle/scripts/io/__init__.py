"""Reading inputs: which files are radiographs (discovery), how each format is decoded (DICOM, PNG/JPEG/BMP/TIFF,
NIfTI), what can go wrong with one input, and how files are written atomically."""
