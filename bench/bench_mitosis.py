"""Mitosis detection: the two-stage proposal pipeline against a sliding-window baseline.

Generates HPFs with known mitoses, prepares patches, trains the classifier with the shared trainer
(FP oversampling on), tunes the threshold on validation images, then runs both approaches on the
same held-out images with the same model in one process: tiles classified, wall time, F1 (TUPAC16
criterion, 30 px). The last line is ``mitosis ratio: <sliding-window wall time / proposal wall time>``.

Example: ``python bench/bench_mitosis.py --size 1024 --test-images 8 --model resnet50``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="HPF side in pixels")
    parser.add_argument("--train-images", type=int, default=10, help="generated training+validation HPFs")
    parser.add_argument("--test-images", type=int, default=4, help="held-out HPFs both approaches run on")
    parser.add_argument("--model", default="smallcnn", help="registry model (resnet50 for the real setup)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--stride", type=int, default=16, help="sliding-window stride")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for inference")
    parser.add_argument("--output", default=None, help="keep outputs here (default: a temp folder)")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

    import ray

    from medray.mitosis.compare import compare, markdown
    from medray.mitosis.config import MitosisConfig
    from medray.mitosis.workflow import prepare, train
    from medray.synth.hpf import Config, generate

    root = args.output or tempfile.mkdtemp(prefix="bench-mitosis-")
    common = dict(size=args.size, mitoses_min=2, mitoses_max=5 * (args.size // 512) ** 2, mimics_per_image=4)
    generate(Config(output=f"{root}/hpf", num_images=args.train_images, seed=1, **common))
    generate(Config(output=f"{root}/test", num_images=args.test_images, seed=2, **common))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    cfg = MitosisConfig.model_validate({
        "inputs": {"hpf_dir": f"{root}/hpf"}, "output": f"{root}/out",
        "sliding_window": {"stride": args.stride}, "detect": {"torch_threads": args.threads},
        "train": {"labels": ["normal", "mitosis"], "model": {"name": args.model}, "preprocessing": {"size": 64},
                  "epochs": args.epochs, "batch_size": 32, "optimizer": {"lr": 0.003},
                  "imbalance": "balanced_sampling", "num_threads": args.threads,
                  "fp_oversampling": {"rounds": 1, "negative_class": "normal", "positive_class": "mitosis"}}})
    prep = prepare(cfg)
    print(f"proposal recall (train/val): {prep['train']['proposal_recall']:.4f} / {prep['val']['proposal_recall']:.4f}")
    trained = train(cfg)
    print(f"tuned threshold {trained['mitosis']['threshold']:.3f}, val F1 {trained['mitosis']['val_f1']:.3f}")
    test_cfg = cfg.model_copy(update={"inputs": cfg.inputs.model_copy(update={"hpf_dir": f"{root}/test"})})
    report = compare(test_cfg)
    print(markdown(report))
    print(json.dumps({k: v for k, v in report.items() if k != "approaches"}, default=str))
    p, s = report["approaches"]["proposals"], report["approaches"]["sliding_window"]
    print(f"tiles: sliding window {s['tiles']} / proposals {p['tiles']} = {report['tiles_ratio']:.2f}")
    print(f"F1: proposals {p['f1']:.3f}, sliding window {s['f1']:.3f}")
    print(f"mitosis ratio: {report['time_ratio']:.2f}")


if __name__ == "__main__":
    main()
