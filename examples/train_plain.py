"""Train one torchvision classifier on Fashion-MNIST and log it to MLflow, without ofexp.

    python examples/train_plain.py --arch resnet18 --seed 1 \
        --tracking-uri sqlite:////work/foreign/mlflow.db --artifact-location /work/foreign/artifacts

This is the kind of script someone who never heard of ofexp would write (issue #23):
it uses only torch, torchvision, numpy and mlflow. The images are read from the four
original .gz files (idx format), kept as float pixels in [0, 1] with no mean/std
normalisation, 28x28, the grey channel repeated to 3 channels so that torchvision's
constructors are used as they are (num_classes=10). The training set is a fixed
random subset (--subset-seed, the same for every --seed); --seed sets the
initialisation and the batch order. The test accuracy is measured on all 10,000
test images. The run logs its params, the train loss per epoch, `test_accuracy`, and
the model with `mlflow.pytorch.log_model` and an input example (so it has a
signature), in MLflow's default format (pt2, torch.export, in MLflow 3). The last stdout line is the run ID.
"""
import argparse
import gzip
import os
import sys

import mlflow
import mlflow.pytorch
import numpy as np
import torch
import torch.nn.functional as F
import torchvision

ARCHS = ("resnet18", "mobilenet_v2", "densenet", "vit")


def read_idx(path):
    """An idx file (images uint8 [N, rows, cols] or labels uint8 [N]) as a numpy array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]  # magic number: 0x00 0x00 <type 0x08 = uint8> <number of dimensions>
    dims = np.frombuffer(data, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_split(data_dir, prefix):
    """Images as float32 [N, 3, 28, 28] in [0, 1] and labels as int64 [N]."""
    images = read_idx(os.path.join(data_dir, f"{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(data_dir, f"{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1).repeat(1, 3, 1, 1)
    return x, torch.from_numpy(labels.astype(np.int64))


def build(arch):
    models = torchvision.models
    if arch == "resnet18":
        return models.resnet18(num_classes=10)
    if arch == "mobilenet_v2":
        return models.mobilenet_v2(num_classes=10, width_mult=0.5)
    if arch == "densenet":
        return models.DenseNet(growth_rate=12, block_config=(2, 2, 2), num_init_features=16, num_classes=10)
    if arch == "vit":
        return models.VisionTransformer(image_size=28, patch_size=4, num_layers=2, num_heads=4,
                                        hidden_dim=64, mlp_dim=128, num_classes=10)
    raise ValueError(arch)


@torch.no_grad()
def accuracy(model, x, y, batch_size=1000):
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
    return correct / len(x)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=ARCHS, required=True)
    p.add_argument("--seed", type=int, default=1, help="initialisation and batch order")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-subset", type=int, default=10000, help="training images used (0: all 60,000)")
    p.add_argument("--subset-seed", type=int, default=0, help="which training images (same for every --seed)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate, cosine-decayed to 0")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--tracking-uri", default=None, help="default: MLflow's own (MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="foreign-models")
    p.add_argument("--artifact-location", default=None,
                   help="where a new experiment keeps its artifacts (default: MLflow's, ./mlruns for a sqlite store)")
    args = p.parse_args()

    x_train, y_train = load_split(args.data_dir, "train")
    x_test, y_test = load_split(args.data_dir, "t10k")
    if args.train_subset:
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.subset_seed))
        x_train, y_train = x_train[keep[:args.train_subset]], y_train[keep[:args.train_subset]]

    torch.manual_seed(args.seed)
    model = build(args.arch)
    order = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * steps_per_epoch)

    if args.tracking_uri:
        mlflow.set_tracking_uri(args.tracking_uri)
    if args.artifact_location and mlflow.get_experiment_by_name(args.experiment) is None:
        mlflow.create_experiment(args.experiment, artifact_location=args.artifact_location)
    mlflow.set_experiment(args.experiment)
    with mlflow.start_run(run_name=f"{args.arch} seed{args.seed}") as run:
        mlflow.log_params({**vars(args), "train_images": len(x_train), "test_images": len(x_test),
                           "parameters": sum(t.numel() for t in model.parameters()),
                           "pixels": "[0, 1], grey repeated to 3 channels, no normalisation",
                           "optimizer": "Adam, cosine learning rate"})
        for epoch in range(args.epochs):
            model.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(x_train), generator=order).split(args.batch_size):
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            mlflow.log_metric("train_loss", total / seen, step=epoch)
            print(f"epoch {epoch + 1}/{args.epochs}: train loss {total / seen:.4f}", file=sys.stderr)
        test_accuracy = accuracy(model, x_test, y_test)
        mlflow.log_metric("test_accuracy", test_accuracy)
        print(f"test accuracy {test_accuracy:.4f}", file=sys.stderr)
        model.eval()
        mlflow.pytorch.log_model(model, name="model", input_example=x_test[:2].numpy())
    print(run.info.run_id)


if __name__ == "__main__":
    main()
