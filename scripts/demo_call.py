"""Call the running server the way a user would: list models, classify, regress."""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits

from serving.client import Client

TRUE_W = np.array([2.0, -3.4], dtype=np.float32)  # the synthetic data's true parameters
TRUE_B = 4.2


def sample_images(shape: tuple[int, ...], count: int) -> tuple[np.ndarray, list[str]]:
    """Real test images when the model's input shape is one we can supply, else noise."""
    if shape == (1, 8, 8):
        digits = load_digits()
        images = (digits.images[-count:] / 16.0).astype(np.float32)[:, None]
        return images, [str(t) for t in digits.target[-count:]]
    rng = np.random.default_rng(0)
    return rng.random((count, *shape), dtype=np.float32), ["?"] * count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:8001")
    parser.add_argument(
        "--connections",
        type=int,
        default=1,
        help="gRPC connections used round-robin (a --workers N server: one worker each)",
    )
    args = parser.parse_args()
    if args.connections < 1:
        parser.error(f"--connections must be >= 1, got {args.connections}")
    with Client(args.target, timeout=10, connections=args.connections) as client:
        for info in client.list_models():
            ready = [v.version for v in info.versions if v.state == 2]
            print(f"model {info.name}: task={info.task} ready versions={ready}")
        for name in ("softmax", "mlp"):
            info = client.get_model(name)
            shape = tuple(int(d) for d in info.inputs[0].shape[1:])
            images, truth = sample_images(shape, 5)
            result = client.predict(name, images, top_k=3)
            print(f"\n{name} v{result.version} on {len(images)} test images ({shape}):")
            for true, labels, scores in zip(truth, result.labels, result.scores, strict=True):
                ranked = ", ".join(f"{lab} {s:.2f}" for lab, s in zip(labels, scores, strict=True))
                print(f"  true {true:>3}  top-3: {ranked}")
        info = client.get_model("linear")
        features = int(info.inputs[0].shape[1])
        rows = np.array([[1.0] * features, [0.0] * features], dtype=np.float32)
        result = client.predict("linear", rows)
        print(f"\nlinear v{result.version} on {rows.tolist()}:")
        for row, value in zip(rows, result.predictions[:, 0], strict=True):
            expected = float(row @ TRUE_W + TRUE_B) if features == 2 else float("nan")
            print(f"  prediction {value:.4f}  (true function gives {expected:.4f})")


if __name__ == "__main__":
    main()
