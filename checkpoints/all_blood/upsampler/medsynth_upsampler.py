"""diffusers entry point of a medsynth checkpoint: the pipeline class is medsynth's own.

    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained("THIS_FOLDER", custom_pipeline="medsynth_upsampler", trust_remote_code=True)
"""
from medsynth.upsampler import UpsamplerPipeline  # noqa: F401  (pip install medsynth)
