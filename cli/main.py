"""The `easel` command: run the bot, generate from the terminal, list models, build the test model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _progress_bar(step: int, total: int) -> None:
    width = 30
    filled = int(width * step / max(1, total))
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{total}")
    if step >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _add_generate(sub) -> None:
    from generation.requests import MASKED_CONTENT  # light: no torch

    p = sub.add_parser("generate", help="generate images from a prompt (A1111 prompt syntax)")
    p.add_argument("prompt")
    p.add_argument("--negative", default=None, help="negative prompt")
    p.add_argument("--checkpoint", default="", help="checkpoint name, folder or file path")
    p.add_argument("--sampler", default=None, help='A1111 sampler name, e.g. "DPM++ 2M Karras"')
    p.add_argument("--schedule", default=None, help="schedule type: Automatic, Karras, Exponential, Beta, SGM Uniform")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--cfg", type=float, default=None, help="CFG scale")
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--seed", type=int, default=-1, help="-1: random")
    p.add_argument("--count", type=int, default=None)
    p.add_argument("--clip-skip", type=int, default=None)
    p.add_argument("--subseed", type=int, default=None, help="variation seed (A1111); -1: random")
    p.add_argument("--subseed-strength", type=float, default=None, help="variation strength, 0-1")
    p.add_argument("--seed-resize-from", default=None, metavar="WxH",
                   help="draw the noise as for this size, pasted centred (A1111's seed resize)")
    p.add_argument("--init", type=Path, default=None, help="init image: img2img (or inpaint with --mask)")
    p.add_argument("--strength", type=float, default=None, help="denoising strength for --init or the hires fix, 0-1")
    p.add_argument("--mask", type=Path, default=None, help="inpaint mask, white = repaint")
    p.add_argument("--inpaint", action="store_true",
                   help="inpaint the transparent part of --init (a mask from its alpha channel)")
    p.add_argument("--mask-blur", type=int, default=None, help="inpaint: blur of the mask's edge in pixels")
    p.add_argument("--invert-mask", action="store_true", help="inpaint: repaint what is NOT masked")
    p.add_argument("--masked-content", default=None, choices=MASKED_CONTENT,
                   help="inpaint: what the masked part starts from")
    p.add_argument("--only-masked", action="store_true",
                   help="inpaint: repaint a crop around the mask at full size, then paste it back")
    p.add_argument("--padding", type=int, default=None, help="inpaint, --only-masked: pixels of context")
    p.add_argument("--hr-scale", type=float, default=None, help="hires fix (A1111): upscale by this, then refine")
    p.add_argument("--hr-resize", default=None, metavar="WxH", help="hires fix to this size instead (0 keeps the aspect)")
    p.add_argument("--hr-upscaler", default=None, help='hires fix upscaler: "Latent" (default), a Latent mode or an upscaler')
    p.add_argument("--hr-steps", type=int, default=None, help="hires fix steps (0: as many as --steps)")
    p.add_argument("--hr-sampler", default=None, help="hires fix sampler (default: --sampler)")
    p.add_argument("--hr-prompt", default=None, help="hires fix prompt (default: the prompt)")
    p.add_argument("--hr-negative", default=None, help="hires fix negative prompt (default: --negative)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder, or a .png path for one image")


def _add_upscale(sub) -> None:
    p = sub.add_parser("upscale", help="upscale an image (A1111's Extras); its parameters are kept")
    p.add_argument("image", type=Path)
    p.add_argument("--upscaler", default=None, help='an upscaler from models/upscalers/, "Lanczos" or "Nearest"')
    p.add_argument("--scale", type=float, default=None, help="how many times larger (default: config's upscale_by)")
    p.add_argument("--out", type=Path, default=Path("out"), help="output folder, or a .png path")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="easel", description="Stable Diffusion for a Discord community, on your own GPU.")
    parser.add_argument("--config", type=Path, default=None, help="config.toml (default: $EASEL_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="run the Discord bot (needs DISCORD_TOKEN)")
    _add_generate(sub)
    _add_upscale(sub)
    p = sub.add_parser("worker", help="serve the bot's jobs on one GPU, through the broker (EASEL_BROKER_URL)")
    p.add_argument("--device", default=None, help="cuda, cuda:1, mps or cpu (default: config's [device])")
    p.add_argument("--name", default=None, help="this worker's name (default: host-pid)")
    sub.add_parser("models", help="list checkpoints and embeddings with hashes and skip reasons")
    sub.add_parser("doctor", help="a short report: versions, device, config problems, models, Discord, broker")
    p = sub.add_parser("make-test-model",
                       help="write a tiny offline SD-1.x model (random weights) for tests and demos")
    p.add_argument("target", type=Path, help="folder to write; DIR.safetensors is written beside it")
    p.add_argument("--sdxl", action="store_true", help="a tiny SDXL model instead (two text encoders)")
    p.add_argument("--inpaint", action="store_true",
                   help="a dedicated inpainting model (9-channel UNet: latents + mask + masked image)")
    p = sub.add_parser("info", help="print the generation parameters stored in a PNG/JPEG/WEBP")
    p.add_argument("image", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from generation.errors import EaselError

    try:
        return _dispatch(args)
    except EaselError as exc:
        print(f"easel: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("easel: interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from generation import quiet_libraries

    from . import commands

    quiet_libraries()

    if args.command == "make-test-model":
        architecture = ("tiny-sdxl" if args.sdxl else "tiny-sd1") + ("-inpaint" if args.inpaint else "")
        return commands.make_test_model(args.target, architecture=architecture)
    if args.command == "info":
        return commands.info(args.image)
    if args.command == "doctor":  # before load_config: it reports a broken config instead of stopping
        return commands.doctor(args.config)
    from generation.config import load_config

    config = load_config(args.config)
    if args.command == "models":
        return commands.models(config)
    if args.command in ("generate", "upscale"):
        return commands.generate(config, args, progress=_progress_bar)
    if args.command == "run":
        return commands.run_bot(config)
    if args.command == "worker":
        return commands.worker(config, device=args.device, name=args.name)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
