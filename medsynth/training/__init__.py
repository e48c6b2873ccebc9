"""Training: the classifier (``classifier``), the diffusion model (``diffusion``) and their shared
learning-rate ``schedule``. Nothing is imported here, so importing one trainer does not import the other."""
