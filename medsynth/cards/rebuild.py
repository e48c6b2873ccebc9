"""Rebuilding a checkpoint's model card from its run records (``args.json``, ``train_summary.json``,
logs): for a card written by an older medsynth, or after the domain registry changed. Above training
in the layers (it rebuilds the recipes); ``render`` writes the text."""

from __future__ import annotations

import numpy as np

from ..domains import get_domain
from .render import base_run, classifier_card, diffusion_card, replace_section


def _read_csv(path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return [{k: (float(v) if k not in ("epoch", "step") else int(float(v))) for k, v in row.items() if v != ""}
                for row in csv.DictReader(f)]


def _keep_measured_sections(old: str, new: str) -> str:
    """Carry the sections written after training (``quality --card``, ``evaluate --card``, ``audit --card``)
    into a rebuilt card."""
    from ..audit import CARD_SECTION as AUDIT_SECTION
    from ..quality import CARD_SECTION

    for line in old.splitlines():
        if line in (CARD_SECTION, AUDIT_SECTION) or line.startswith("## Evaluation: "):
            start = old.index(line + "\n")
            end = old.find("\n## ", start + len(line))
            new = replace_section(new, line, old[start : end + 1 if end >= 0 else len(old)])
    return new


def rebuild_card(folder) -> str:
    """Rewrite a checkpoint's README.md from its run records (args.json, train_summary.json, logs).

    For a card written by an older medsynth, or after the domain registry changed (caveats, licence).
    Sections written by ``quality --card`` and ``evaluate --card`` are kept. Returns the new card.
    """
    import json
    from pathlib import Path

    from .. import atomic
    from ..errors import MedsynthError

    folder = Path(folder)
    need = ["args.json", "train_summary.json"]
    missing = [n for n in need if not (folder / n).is_file()]
    if missing:
        raise MedsynthError(f"{folder}: cannot rebuild its card without {', '.join(missing)} (written by training)")
    args = json.loads((folder / "args.json").read_text())
    summary = json.loads((folder / "train_summary.json").read_text())
    old = (folder / "README.md").read_text() if (folder / "README.md").is_file() else ""
    if (folder / "model_index.json").is_file():
        from ..recipes import DiffusionRecipe

        resumed_at = args.pop("resumed_at_steps", None)
        recipe = DiffusionRecipe(**args)
        domain = get_domain(recipe.domain)
        split = json.loads((folder / "split.json").read_text())
        counts = {c: 0 for c in domain.classes}
        for path in split["train"]:
            counts[Path(path).parent.name] += 1
        from safetensors import safe_open

        params = 0
        for weights in (folder / "unet").glob("*.safetensors"):
            with safe_open(str(weights), "pt") as f:
                for key in f.keys():
                    params += int(np.prod(f.get_slice(key).get_shape()))
        info = {"step": summary["steps"], "seconds": summary["seconds"], "hardware": summary["hardware"],
                "n_train": summary["n_train"], "n_val": summary["n_val"], "train_class_counts": counts,
                "parameters": params, "final": True, "base": summary.get("base") or base_run(recipe.init_from),
                "resumed_at_steps": resumed_at, "stop_reason": summary.get("stop_reason")}
        card = diffusion_card(domain, recipe, info, _read_csv(folder / "loss.csv"))
    elif (folder / "config.json").is_file():
        from ..classify import ClassifierConfig
        from ..recipes import ClassifierRecipe

        config = ClassifierConfig.from_dict(json.loads((folder / "config.json").read_text()), str(folder))
        recipe = ClassifierRecipe(**args)
        if "synthetic_training_data" not in summary:  # a summary written before provenance was recorded
            from ..synthetic.provenance import read_provenance

            summary["synthetic_training_data"] = read_provenance(recipe.data) if Path(recipe.data).is_dir() else None
        card = classifier_card(config, recipe, summary, _read_csv(folder / "train_log.csv"))
    else:
        raise MedsynthError(f"{folder} is neither a medsynth classifier nor a diffusion checkpoint")
    card = _keep_measured_sections(old, card)
    atomic.write_text(folder / "README.md", card)
    return card
