"""Pipeline stages: ISR, characterisation, calibration, coaddition and measurement."""
