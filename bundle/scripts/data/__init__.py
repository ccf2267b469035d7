"""Training data: datalists from the folder layouts users have, the synthetic default set, MONAI data set classes."""
