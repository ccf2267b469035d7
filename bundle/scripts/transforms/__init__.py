"""MONAI transforms the bundle adds: image and label preparation, simulated opacities, mask post-processing."""
