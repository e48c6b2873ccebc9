"""medsynth: synthetic medical images from diffusion models, CNN classifiers, and explanations.

Research use only; not a medical device.
"""

__version__ = "0.1.0"

from .domains import DOMAINS, Augmentation, Domain, get_domain  # noqa: E402
from .errors import ImageLoadError, MedsynthError  # noqa: E402

__all__ = ["DOMAINS", "Augmentation", "Domain", "get_domain", "ImageLoadError", "MedsynthError", "__version__"]
