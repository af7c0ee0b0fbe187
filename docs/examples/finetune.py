"""Fine-tune a fedssl encoder: load it, add a linear head, train it on labelled data.

    python docs/examples/finetune.py runs/demo --dataset mnist1d --labels-per-class 5
    python docs/examples/finetune.py runs/derm --data labelled.npz --out derm-finetuned.pt

The recipe is the one `fedssl evaluate --finetune` and `fedssl simulate`'s label-efficiency
table use (fedssl.ssl_core.finetune); `--compare` also trains the same network from scratch.
"""
import argparse

import torch

import fedssl
from fedssl.ssl_core.augmentations import augment_for
from fedssl.ssl_core.datasets import load_dataset, require_labels
from fedssl.ssl_core.finetune import FinetuneRecipe, label_subset, score, train_classifier

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("run", help="run directory (or its encoder.safetensors)")
parser.add_argument("--data", default="", help=".npz, image folder, DICOM or NIfTI")
parser.add_argument("--dataset", default="auto", help="auto, or mnist1d/digits without --data")
parser.add_argument("--labels-per-class", type=int, default=0, help="0: every label")
parser.add_argument("--steps", type=int, default=FinetuneRecipe.steps)
parser.add_argument("--compare", action="store_true", help="also train it from scratch")
parser.add_argument("--out", default="finetuned.pt")
args = parser.parse_args()

encoder = fedssl.load_encoder(args.run)  # the trained encoder: a torch nn.Module
# labelled records, one class each (the format is inferred from the path; 20 % held out)
data = require_labels(load_dataset(args.dataset, args.data), "the fine-tuning data")
x, y = data.x_train, data.y_train
if args.labels_per_class:  # what a site with a few labels has
    pick = label_subset(y, args.labels_per_class, seed=0)
    x, y = x[pick], y[pick]
recipe = FinetuneRecipe(steps=args.steps)  # AdamW, cosine decay, the data's SSL augmentation
augment = augment_for(data.input_shape, data.name)
model = train_classifier(encoder, x, y, recipe, augment=augment, num_outputs=data.num_classes)
print(f"fine-tuned on {len(x)} labelled records: test {score(model, data.x_test, data.y_test)}")
if args.compare:  # the same architecture, randomly initialised, the same recipe and records
    fresh = type(encoder)(**encoder.arch_kwargs)
    scratch = train_classifier(fresh, x, y, recipe, augment=augment,
                               num_outputs=data.num_classes)
    print(f"from scratch: test {score(scratch, data.x_test, data.y_test)}")
torch.save(model.state_dict(), args.out)
