"""Using trained models: evaluate, classify, explain, explain-check, ood-fit, domains."""

from __future__ import annotations

import json
import time
from pathlib import Path

from ..domains import DOMAINS
from ..errors import MedsynthError
from .common import EXIT_USER_ERROR, positive_int


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a classifier checkpoint on a labelled folder",
        description="Classify every image under DATA/<class>/ and report accuracy, macro-F1, per-class "
        "precision/recall/F1/support and the confusion matrix. Class names and order come from the checkpoint.",
    )
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="folder with one sub-folder per class; other files are ignored")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON object with all metrics")
    p.add_argument("--plot", default=None, metavar="PATH", help="also write a confusion-matrix PNG here")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images per forward pass; 16 is fastest on small CPUs, raise it on a GPU (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--card", action="store_true",
                   help="also write the result into the checkpoint's model card (an 'Evaluation' section per "
                   "data folder) and evaluation.json")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from ..evaluate import evaluate_folder
    from ..metrics import plot_confusion_matrix

    result = evaluate_folder(args.checkpoint, args.data, args.batch_size, args.device, progress=not args.json)
    if args.card:
        from ..cards.render import add_evaluation

        add_evaluation(args.checkpoint, args.data, result)
    if args.plot:
        plot_confusion_matrix(result["confusion_matrix"], result["classes"], args.plot,
                              f"{result['domain']}: accuracy {result['accuracy']:.3f}, n={result['n']}")
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['domain']}: n={result['n']}  accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}"
          f"  ({result['seconds']:.1f} s)")
    width = max(len(c) for c in result["classes"])
    print(f"{'class':<{width}}  precision  recall      f1  support")
    for name, m in result["per_class"].items():
        print(f"{name:<{width}}  {m['precision']:9.4f}  {m['recall']:6.4f}  {m['f1']:6.4f}  {m['support']:7d}")
    print("confusion matrix (rows: true, columns: predicted):")
    for name, row in zip(result["classes"], result["confusion_matrix"]):
        print(f"{name:<{width}}  " + " ".join(f"{v:6d}" for v in row))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="class probabilities for image files",
                       description="Print the top class and every class probability for each IMAGE.")
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="PNG, JPEG, BMP, TIFF, WebP, GIF, DICOM (any syntax in docs/inputs.md) or NIfTI files")
    _add_frame(p)
    p.add_argument("--json", action="store_true",
                   help="one JSON line per file ({file, class, ...} or {file, error}), then a last line with all "
                   "results")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.set_defaults(func=_cmd_classify)


def _add_frame(p) -> None:
    p.add_argument("--frame", "--slice", dest="frame", type=int, default=None, metavar="N",
                   help="which frame of a multi-frame DICOM (or animation) or which axial slice of a NIfTI volume "
                   "to read, counted from 0 (default: the middle frame/slice; an animation's first frame)")


def _cmd_classify(args) -> int:
    import sys

    from ..classify import load_classifier
    from ..evaluate import classify_files
    from ..ood import sentence

    started = time.time()
    clf = load_classifier(args.checkpoint, args.device)
    results = classify_files(clf, args.images, checkpoint=args.checkpoint, frame=args.frame)
    refused = [r for r in results if "error" in r]
    for r in results:
        if "error" in r:
            print(f"medsynth: error: {r['error']}", file=sys.stderr)
        if args.json:
            print(json.dumps(r))
            continue
        if "error" in r:
            continue
        probs = "  ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
        line = f"{r['file']}: {sentence(r['class'], r['probability'], r['out_of_domain'])}   [{probs}]"
        if r["resolution"].get("low"):
            line += f"   Small scan: {r['resolution']['note']}"
        if r.get("synthetic"):
            from ..synthetic.marking import describe

            line += f"   Marked synthetic: {describe(r['synthetic'])}."
        print(line)
    if args.json:
        print(json.dumps({"domain": clf.config.domain, "classes": clf.classes,
                          "results": [r for r in results if "error" not in r], "errors": refused,
                          "seconds": round(time.time() - started, 3)}))
    if refused:
        print(f"medsynth: {len(refused)} of {len(results)} file{'s' if len(results) != 1 else ''} could not be "
              "read (named above); the others were classified", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="say whether image files are marked as synthetic (medsynth provenance or IPTC XMP), and by what",
        description="Read the synthetic-image marks of each FILE: medsynth's PNG text chunks (generator, domain, "
        "class, seed, sampler, steps, guidance, upsampler, version) and the XMP IPTC digital source type "
        "trainedAlgorithmicMedia that content-credential tools read. Exit code 0 whether or not a file is marked.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON line per file: {file, synthetic, marking}")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(args) -> int:
    from ..synthetic.marking import describe, read_marking

    for name in args.files:
        if not Path(name).is_file():
            raise MedsynthError(f"{name}: no such file")
        marking = read_marking(name)
        if args.json:
            print(json.dumps({"file": name, "synthetic": bool(marking), "marking": marking}))
        else:
            print(f"{name}: {describe(marking)}")
    return 0


def _add_explain(sub) -> None:
    from ..recipes import LIME_DEFAULTS, METHODS

    p = sub.add_parser(
        "explain",
        help="LIME or Grad-CAM overlay showing what a classifier looks at",
        description="Explain a classifier's prediction for IMAGE and write the overlay PNG. LIME shows the "
        "superpixels that support (green) or oppose (red) the class; Grad-CAM a heat map with a colour bar.",
    )
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("image", metavar="IMAGE", help="PNG, JPEG, BMP, TIFF, WebP, GIF, DICOM or NIfTI file")
    _add_frame(p)
    p.add_argument("--method", choices=list(METHODS), default="lime", help="(default %(default)s)")
    p.add_argument("--out", required=True, help="overlay PNG to write")
    p.add_argument("--target", default=None, help="class to explain (default: the predicted class)")
    p.add_argument("--num-samples", type=int, default=LIME_DEFAULTS["num_samples"],
                   help="LIME: perturbed images (default %(default)s)")
    p.add_argument("--num-features", type=int, default=LIME_DEFAULTS["num_features"],
                   help="LIME: superpixels shown (default %(default)s)")
    p.add_argument("--n-segments", type=int, default=LIME_DEFAULTS["n_segments"],
                   help="LIME: SLIC superpixels (default %(default)s)")
    p.add_argument("--negative", action="store_true", help="LIME: also show regions that oppose the class")
    p.add_argument("--hide-color", type=float, default=None,
                   help="LIME: grey value (0-255) for hidden superpixels (default: each superpixel's mean)")
    p.add_argument("--seed", type=int, default=0, help="LIME: perturbation seed (default %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object (class, probabilities, seconds, out)")
    p.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    from ..classify import load_classifier
    from ..explain import explain, save_overlay
    from ..io import load_image

    from .. import ood

    clf = load_classifier(args.checkpoint, args.device)
    image = load_image(args.image, clf.config.channels, frame=args.frame)
    verdict = ood.check(ood.find_reference(args.checkpoint, clf.config.domain), [image])[0]
    if verdict["blank"]:
        raise MedsynthError(f"{args.image}: blank image (one flat colour): nothing to explain, since no region can "
                            "support one class more than another")
    exp = explain(image, clf, args.method, args.target, num_samples=args.num_samples, num_features=args.num_features,
                  n_segments=args.n_segments, positive_only=not args.negative, hide_color=args.hide_color,
                  seed=args.seed)
    save_overlay(exp, args.out)
    from ..explain_check import faithfulness_line

    faithfulness = faithfulness_line(clf, image, exp)
    if args.json:
        print(json.dumps({"file": args.image, **exp.summary(), "out": args.out, "in_domain": verdict["in_domain"],
                          "out_of_domain": verdict, "faithfulness": faithfulness}))
    else:
        caveat = ("" if verdict["in_domain"] is not False else
                  f" Out of domain: this image {verdict['note'].split(';')[0]}; the overlay shows where the CNN looks "
                  f"to produce {exp.target_class}, which is not meaningful for it.")
        print(f"{args.image}: {exp.target_class} ({exp.probability:.3f}); {args.method} overlay written to "
              f"{args.out} in {exp.seconds:.1f} s.{caveat}")
        print(f"Faithfulness: {faithfulness['text']}.")
    return 0


def _add_explain_check(sub) -> None:
    p = sub.add_parser(
        "explain-check",
        help="check whether a classifier's explanations are faithful, sane, stable and plausible",
        description="For up to N images per class of DATA, explain the predicted class with each method and "
        "measure: deletion/insertion AUC against random pixel orderings (faithfulness), cascading weight "
        "randomisation (sanity), maps under small input noise (stability), and the share of the relevance inside "
        "the anatomy and in the border frame (plausibility). Writes OUT/explain_check.json, OUT/report.md, "
        "OUT/examples.png and OUT/curves.png. See docs/cli.md#explain-check.",
    )
    p.add_argument("--checkpoint", required=True, help="classifier folder (config.json + model.safetensors)")
    p.add_argument("--data", required=True, help="labelled folder with one sub-folder per class")
    p.add_argument("--out", required=True, help="folder for the report, the JSON and the figures")
    p.add_argument("--methods", default="gradcam,lime,occlusion",
                   help="comma-separated, from gradcam, lime, occlusion (default %(default)s)")
    p.add_argument("--n-per-class", type=positive_int, default=4, help="images per class at most (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="image choice, random orderings, LIME (default %(default)s)")
    p.add_argument("--compare-with", default=None, metavar="CKPT",
                   help="another classifier of the same domain (e.g. the synthetic-only CNN): compare its maps")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu", help="(default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line of stdout: one JSON summary object")
    p.set_defaults(func=_cmd_explain_check)


def _cmd_explain_check(args) -> int:
    import sys

    from ..explain_check import check_methods, run_check

    methods = check_methods(args.methods.split(","))
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    result = run_check(args.checkpoint, args.data, args.out, methods=methods, n_per_class=args.n_per_class,
                       seed=args.seed, compare_with=args.compare_with, progress=progress, device=args.device)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"{result['domain']}: {result['n_images']} images, methods {', '.join(methods)} "
          f"({result['seconds']:.1f} s)")
    for method, verdicts in result["verdicts"].items():
        for key, text in verdicts.items():
            print(f"{method} {key}: {text}")
    print(f"wrote {result['files']['report']}, {result['files']['json']}, {result['files']['examples']}, "
          f"{result['files']['curves']}")
    return 0


def _add_ood_fit(sub) -> None:
    p = sub.add_parser(
        "ood-fit", help="fit the out-of-domain guard of a domain on real images",
        description="Describe a domain's real training images in ImageNet Lite0 features (at 64 px, the domains' "
        "training resolution) and set the out-of-domain threshold at the --quantile of held-out real images' "
        "scores. Writes OUT/ood.safetensors: in checkpoints/<domain> it guards every classifier of the domain "
        "(classify, the app and the API flag inputs that do not look like the domain's images).")
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS))
    p.add_argument("--train", required=True, help="real training images, one sub-folder per class")
    p.add_argument("--calibration", required=True, help="real held-out images of the domain (not in --train)")
    p.add_argument("--out", required=True, help="folder for ood.safetensors, e.g. checkpoints/<domain>")
    p.add_argument("--components", type=int, default=64, help="principal axes kept (default %(default)s)")
    p.add_argument("--quantile", type=float, default=0.99,
                   help="share of held-out real images that pass (default %(default)s)")
    p.add_argument("--json", action="store_true", help="last line of stdout: the record as one JSON object")
    p.set_defaults(func=_cmd_ood_fit)


def _cmd_ood_fit(args) -> int:
    from ..ood import fit_domain

    if args.components < 1:
        raise MedsynthError(f"--components must be at least 1, got {args.components}")
    record = fit_domain(args.domain, args.train, args.calibration, args.out, args.components, args.quantile)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"wrote {record['path']}: threshold {record['threshold']:.1f} ({record['quantile']:.0%} of "
              f"{record['n_calibration']} held-out images pass; {record['n_train']} training images) "
              f"in {record['seconds']} s")
    return 0


def _add_domains(sub) -> None:
    p = sub.add_parser("domains", help="list the known domains and their classes")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_domains)


def _cmd_domains(args) -> int:
    if args.json:
        print(json.dumps({k: {"title": d.title, "classes": list(d.classes), "channels": d.channels,
                              "classifier_size": d.classifier_size, "diffusion_size": d.diffusion_size}
                          for k, d in DOMAINS.items()}))
        return 0
    for key, d in DOMAINS.items():
        print(f"{key:<10} {d.title} ({d.channels} channel{'s' if d.channels > 1 else ''}): {', '.join(d.classes)}")
    return 0


def register(sub) -> None:
    """Add this group's commands to the ``medsynth`` sub-command parser."""
    _add_evaluate(sub)
    _add_classify(sub)
    _add_explain(sub)
    _add_explain_check(sub)
    _add_inspect(sub)
    _add_ood_fit(sub)
    _add_domains(sub)
