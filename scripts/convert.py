"""Convert any checkpoint mini_clip reads (OpenAI TorchScript or state dict, OpenCLIP, Hugging Face
directory, a model name) to mini_clip's .safetensors.

    python scripts/convert.py ViT-B-32.pt ViT-B-32.safetensors
    python scripts/convert.py ./clip-vit-base-patch32 b32.safetensors --half
    python scripts/convert.py open_clip_pytorch_model.bin h14.safetensors --arch ViT-H-14
"""
import argparse
import sys
import warnings

import torch

import mini_clip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint file, Hugging Face directory or model name")
    p.add_argument("dst", help="the .safetensors file to write")
    p.add_argument("--half", action="store_true", help="store fp16 (half the size; OpenAI's own precision)")
    p.add_argument("--arch", help="OpenCLIP architecture of a file that does not state its own, e.g. "
                                  "ViT-H-14 (names: mini_clip.zoo.ARCHS)")
    args = p.parse_args()
    try:
        with warnings.catch_warnings(record=True) as caught:  # the loader's warnings, one line each
            warnings.simplefilter("always")
            model, _ = mini_clip.load(args.src, arch=args.arch)
        for w in caught:
            print(f"convert: warning: {w.message}", file=sys.stderr)
        mini_clip.save(model.to(torch.float16) if args.half else model, args.dst)
    except (mini_clip.WeightsError, OSError) as e:
        print(f"convert: error: {e}", file=sys.stderr)
        return 1
    print(args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
