"""Fine-tune a fedssl encoder: load it, add a linear head, train a few epochs on labelled data.

    python docs/examples/finetune.py runs/demo --dataset mnist1d --epochs 3
    python docs/examples/finetune.py runs/derm --data labelled.npz --out derm-finetuned.pt
"""
import argparse

import torch
from torch import nn

import fedssl
from fedssl.ssl_core.datasets import load_dataset, require_labels

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", help="run directory (or its encoder.safetensors)")
parser.add_argument("--data", default="", help=".npz, image folder, DICOM or NIfTI")
parser.add_argument("--dataset", default="auto", help="auto, or mnist1d/digits without --data")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--out", default="finetuned.pt")
args = parser.parse_args()

encoder = fedssl.load_encoder(args.run)  # the trained encoder: a torch nn.Module
# labelled records, one class each (the format is inferred from the path; 20 % held out)
data = require_labels(load_dataset(args.dataset, args.data), "the fine-tuning data")
model = nn.Sequential(encoder, nn.Linear(encoder.feature_dim, data.num_classes))

x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long()
x_test, y_test = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).long()
optimizer = torch.optim.AdamW([  # a small step for the pretrained encoder, a larger one
    {"params": encoder.parameters(), "lr": 1e-4},  # for the new head
    {"params": model[1].parameters(), "lr": 1e-3}])
for epoch in range(args.epochs):
    model.train()
    for batch in torch.randperm(len(x)).split(64):
        loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(x_test).argmax(dim=1) == y_test).float().mean().item()
    print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test accuracy {accuracy:.3f}")
torch.save(model.state_dict(), args.out)
