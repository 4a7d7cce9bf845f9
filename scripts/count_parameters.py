"""Parameter counts of configs, as reported in the README.

    python scripts/count_parameters.py gfl_r50.yaml atss_r50.yaml retinanet_r50.yaml [--num-classes 80]
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detector import build_model  # noqa: E402
from detector.config import load_config  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--num-classes", type=int, default=80)
    args = parser.parse_args()
    print(f"{'config':<24} {'parameters':>12} {'trainable':>12}")  # every parameter, as mmdetection counts
    for name in args.configs:
        cfg = load_config(name, ["model.backbone.pretrained=null"])
        model = build_model(cfg.model, args.num_classes)
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        print(f"{name:<24} {total:>12,} {trainable:>12,}")


if __name__ == "__main__":
    main()
