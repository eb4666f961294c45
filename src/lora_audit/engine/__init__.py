"""Running the math over an adapter: devices, host buffers, batches by shape, spectra and
refactorisation."""
