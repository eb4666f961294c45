"""Pure math on thin factors: spectra, truncation, subspaces, metrics (numpy float64; no files,
devices or reports)."""
