"""`make bench`: the tutorial's way vs ffnn's way for one run of model C, then a default `compare`.

The tutorial's way is its own code: torchvision's MNIST + ToTensor + DataLoader
(batch 100, shuffle), its 7-step loop, test accuracy every 500 iterations over a
test DataLoader. ffnn's way: tensors loaded once, batches cut by index, the same
recipe. Both run in this process with torch's default thread count. Then the
wall time of `ffnn compare` with the default experiment into a fresh store.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision.datasets as dsets
import torchvision.transforms as transforms
from torch import nn

from ffnn import data
from ffnn.models import REGISTRY
from ffnn.train import TrainConfig, train


class FeedforwardNeuralNetModel(nn.Module):  # the tutorial's model C, verbatim
    def __init__(self, input_dim, hidden_dim, output_dim):
        super().__init__()
        self.fc1 = nn.Linear(input_dim, hidden_dim)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_dim, output_dim)

    def forward(self, x):
        return self.fc2(self.relu(self.fc1(x)))


def tutorial_way(root: str) -> float:
    """The tutorial's steps 1-7, timed from dataset construction to the last evaluation."""
    start = time.perf_counter()
    train_dataset = dsets.MNIST(root=root, train=True, transform=transforms.ToTensor(), download=False)
    test_dataset = dsets.MNIST(root=root, train=False, transform=transforms.ToTensor())
    batch_size, n_iters = 100, 3000
    num_epochs = int(n_iters / (len(train_dataset) / batch_size))
    train_loader = torch.utils.data.DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)
    test_loader = torch.utils.data.DataLoader(dataset=test_dataset, batch_size=batch_size, shuffle=False)
    model = FeedforwardNeuralNetModel(28 * 28, 100, 10)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    it = 0
    accuracy = 0.0
    for epoch in range(num_epochs):
        for i, (images, labels) in enumerate(train_loader):
            images = images.view(-1, 28 * 28).requires_grad_()
            optimizer.zero_grad()
            outputs = model(images)
            loss = criterion(outputs, labels)
            loss.backward()
            optimizer.step()
            it += 1
            if it % 500 == 0:
                correct = 0
                total = 0
                for images, labels in test_loader:
                    images = images.view(-1, 28 * 28).requires_grad_()
                    outputs = model(images)
                    _, predicted = torch.max(outputs.data, 1)
                    total += labels.size(0)
                    correct += (predicted == labels).sum()
                accuracy = 100 * correct / total
    seconds = time.perf_counter() - start
    print(f"tutorial way: model C, 3000 iterations: {seconds:6.2f} s  (test accuracy {float(accuracy):.2f}%)")
    return seconds


def ffnn_way(root: str) -> float:
    start = time.perf_counter()
    ds = data.load("mnist", root)
    res = train(REGISTRY["C"], TrainConfig(), ds.x_train, ds.y_train, ds.x_test, ds.y_test)
    seconds = time.perf_counter() - start
    print(f"ffnn way:     model C, 3000 iterations: {seconds:6.2f} s  (test accuracy {res.accuracy:.2f}%; "
          f"loop alone {res.seconds:.2f} s)")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--skip-compare", action="store_true", help="only the one-run comparison")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    slow = tutorial_way(args.data_dir)
    fast = ffnn_way(args.data_dir)
    print(f"speed-up: {slow / fast:.1f}x")
    if args.skip_compare:
        return
    # In a scratch folder, so that its store and report do not touch the project's.
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "ffnn", "compare", "--data-dir", str(Path(args.data_dir).resolve()),
               "--config", str(Path("experiments/compare.toml").resolve())]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=tmp)
        print(f"default compare (6 models x 5 seeds, report included, fresh store): "
              f"{time.perf_counter() - start:.1f} s wall")


if __name__ == "__main__":
    main()
