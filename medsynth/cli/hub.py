"""Hugging Face Hub: export and push a Space, push a checkpoint."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def _add_space(sub) -> None:
    p = sub.add_parser("space", help="deploy the app as a Hugging Face Space: export a ready folder, or push it",
                       description="'space export OUT' writes a complete Space folder (app, package, shipped "
                       "checkpoints, examples, reports, README front matter, CPU requirements, LFS .gitattributes). "
                       "'space push --repo-id OWNER/NAME' creates the Space if needed and uploads that folder with "
                       "your Hugging Face token (HF_TOKEN or `hf auth login`).")
    actions = p.add_subparsers(dest="space_action", required=True, metavar="{export,push}")
    e = actions.add_parser("export", help="write a ready Space folder")
    e.add_argument("out", help="the folder to write (must not exist, unless --overwrite)")
    e.add_argument("--checkpoints", default=None, help="checkpoint root to ship (default: the repository's)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    e.add_argument("--json", action="store_true", help="last line: {out, files, bytes, largest}")
    e.set_defaults(func=_cmd_space_export)
    u = actions.add_parser("push", help="create the Space if needed and upload an exported folder")
    u.add_argument("--repo-id", required=True, help="OWNER/NAME of the Space")
    u.add_argument("--folder", default=None, help="an exported folder (default: export into a temporary one)")
    u.add_argument("--private", action="store_true", help="create the Space as private")
    u.add_argument("--dry-run", action="store_true", help="list what would be sent and its size; no network")
    u.add_argument("--json", action="store_true")
    u.set_defaults(func=_cmd_space_push)


def _report(record: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps({k: v for k, v in record.items() if k != "listing"}))
        return
    for name, size in record.get("listing", []):
        print(f"{size / 1e6:10.3f} MB  {name}")
    what = "would send" if record.get("dry_run") else "sent"
    print(f"{record['repo_type']} {record['repo_id']}: {what} {record['files']} files, {record['bytes'] / 1e6:.1f} MB"
          + (f" ({record['url']})" if record.get("url") else ""))


def _cmd_space_export(args) -> int:
    from ..space import export

    record = export(args.out, args.checkpoints, args.overwrite)
    if args.json:
        print(json.dumps(record))
    else:
        print(f"wrote {record['files']} files ({record['bytes'] / 1e6:.1f} MB) to {record['out']}; deploy with "
              f"'python -m medsynth space push --repo-id OWNER/NAME --folder {record['out']}'")
    return 0


def _cmd_space_push(args) -> int:
    from ..space import export, push

    if args.folder:
        _report(push(args.folder, args.repo_id, private=args.private, dry_run=args.dry_run), args.json)
        return 0
    with tempfile.TemporaryDirectory(prefix="medsynth-space-") as tmp:
        folder = Path(tmp) / "space"
        export(folder)
        _report(push(folder, args.repo_id, private=args.private, dry_run=args.dry_run), args.json)
    return 0


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="upload one checkpoint folder (with its card) to a Hub model repository",
                       description="Create OWNER/NAME if needed and upload the checkpoint folder; it then loads "
                       "anywhere as --checkpoint hf://OWNER/NAME (timm: local-dir:/hf-hub:, diffusers: "
                       "custom_pipeline). Uses your token (HF_TOKEN or `hf auth login`).")
    p.add_argument("--checkpoint", required=True, help="a classifier, diffusion or upsampler folder")
    p.add_argument("--repo-id", required=True, help="OWNER/NAME of the model repository")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="list what would be sent; no network")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_push)


def _cmd_push(args) -> int:
    from ..space import push_checkpoint

    _report(push_checkpoint(args.checkpoint, args.repo_id, private=args.private, dry_run=args.dry_run), args.json)
    return 0


def register(sub) -> None:
    _add_space(sub)
    _add_push(sub)
