"""diffusers entry point of a medsynth checkpoint: the pipeline class is medsynth's own.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", custom_pipeline="medsynth_diffusion", trust_remote_code=True)
"""
from medsynth.diffusion import ClassConditionalPipeline  # noqa: F401  (pip install medsynth)
