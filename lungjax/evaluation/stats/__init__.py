"""Statistics on arrays, NumPy and SciPy only (scikit-learn for two curves): one definition of each, public,
shared by every report section, the plots and training's validation."""
